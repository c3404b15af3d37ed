"""FHIR R4 results: a transaction Bundle per study, made from the SR, POSTed with the outbox's
retries to a loopback FHIR endpoint that checks it with fhir.resources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node import fhir
from dicom_node.addresses import FhirDestination, carries, parse_destination
from dicom_node.results.study_result import result_from_sr
from dicom_node.stow import StowOptions
from tests.fhir_server import TOKEN, FhirServer
from tests.helpers import our_sr_file
from tests.mllp import MllpPeer

AUTH = StowOptions(bearer_token=TOKEN)


@pytest.fixture
def server() -> Iterator[FhirServer]:
    s = FhirServer()
    yield s
    s.stop()


def _value(obs: dict[str, Any]) -> Any:
    if "valueQuantity" in obs:
        return obs["valueQuantity"]["value"]
    return obs["valueCodeableConcept"]["coding"][0]["code"]


def test_the_destination_parses_and_takes_only_the_result() -> None:
    dest = parse_destination("fhir+https://ehr.example/fhir/")
    assert dest == FhirDestination("https://ehr.example/fhir")
    assert str(dest) == "fhir+https://ehr.example/fhir"
    assert carries(dest, "sr") and not carries(dest, "sc")
    for bad in ("fhir+ftp://x/y", "fhir+http://user:pw@host/fhir", "fhir+http://"):
        with pytest.raises(ValueError, match="fhir\\+http"):
            parse_destination(bad)


def test_the_bundle_says_what_the_sr_says_and_validates(tmp_path: Path) -> None:
    from fhir.resources.R4B.bundle import Bundle

    sr = pydicom.dcmread(our_sr_file(tmp_path, PatientID="P1"))
    doc = fhir.bundle(result_from_sr(sr))
    Bundle.model_validate(doc)
    kinds = [e["resource"]["resourceType"] for e in doc["entry"]]
    assert kinds.count("DiagnosticReport") == 1 and kinds.count("Device") == 1
    (report,) = [
        e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert report["status"] == "preliminary"
    assert report["conclusionCode"][0]["coding"][0]["code"] == "840539006"  # SCT COVID-19
    assert "not for diagnosis" in report["conclusion"]
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{sr.StudyInstanceUID}"
    assert report["subject"]["identifier"]["value"] == "P1"
    observations = {
        e["resource"]["code"]["coding"][0]["code"]: e["resource"]
        for e in doc["entry"]
        if e["resource"]["resourceType"] == "Observation"
    }
    assert _value(observations["TRIAGE-PRIORITY"]) == "URGENT"
    assert _value(observations["TRIAGE-BAND"]) == "10828004"
    assert _value(observations["P-COVID"]) == 86.0
    assert {o["status"] for o in observations.values()} == {"preliminary"}
    # Every entry is a conditional update: the same SR sent again changes nothing more.
    assert {e["request"]["method"] for e in doc["entry"]} == {"PUT"}


def test_posted_twice_the_server_holds_one_of_each(server: FhirServer, tmp_path: Path) -> None:
    dest = FhirDestination(f"http://127.0.0.1:{server.port}/fhir")
    path = our_sr_file(tmp_path, PatientID="P1")
    for _ in range(2):
        (result,) = fhir.send_results([path], dest, AUTH).results
        assert result.ok, result
    assert server.posts == 2
    assert len(server.of_kind("DiagnosticReport")) == 1 and len(server.of_kind("Device")) == 1
    assert len(server.of_kind("Observation")) == 6  # finding, band, priority, 3 probabilities


def test_an_operation_outcome_or_a_refusal_is_a_failed_attempt_that_says_why(
    server: FhirServer, tmp_path: Path
) -> None:
    dest = FhirDestination(f"http://127.0.0.1:{server.port}/fhir")
    path = our_sr_file(tmp_path, PatientID="P1")
    server.fail = True
    (result,) = fhir.send_results([path], dest, AUTH).results
    assert not result.ok and "HTTP 400" in (result.error or "")
    assert "Patient identifier system not recognised" in (result.error or "")
    server.fail = False
    (result,) = fhir.send_results([path], dest, StowOptions(bearer_token="wrong")).results
    assert not result.ok and "HTTP 401" in (result.error or "")
    https = FhirDestination(f"https://127.0.0.1:{server.port}/fhir")
    (result,) = fhir.send_results([path], https, AUTH).results
    assert not result.ok and "CXR_SEND_TLS_CA" in (result.error or "")
    assert server.of_kind("DiagnosticReport") == []


@pytest.mark.slow
def test_a_study_reaches_the_pacs_the_ris_and_the_ehr_once_each_and_ends_done(
    start_node, pacs, tmp_path: Path
) -> None:
    """A COVID-19-flagged study with PACS, HL7 receiver and FHIR server as destinations: SC and SR
    to the PACS, one ORU^R01
    (AA, after an AE that was retried with its reason) and one DiagnosticReport, with the same
    result and priority; the study is done."""
    from dicom_node.sender import SenderOptions
    from tests.helpers import rows
    from tests.test_pipeline import _pipeline, _received, _study
    from tests.test_viewer import _positive_study
    from worker.db.models import DELIVERING, DONE, Delivery, ProducedObject, StudyResult
    from worker.delivery import attempt_delivery

    ris, ehr = MllpPeer(), FhirServer()
    try:
        node = start_node(
            destinations=[pacs.address, ris.address, ehr.address], stow_bearer_token=TOKEN
        )
        # A COVID-19 film the shipped model flags (the viewer test's positive case).
        study = _received(node, [_positive_study(tmp_path)])
        pipeline = _pipeline(node)
        outcome = pipeline.process(study.id, study.revision, study.study_instance_uid)
        kinds = {o.id: o.kind for o in rows(node.engine, ProducedObject)}
        planned = sorted((kinds[oid], dest) for oid, dest in outcome.to_deliver)
        assert planned == sorted(
            [("sc", pacs.address), ("sr", pacs.address), ("sr", ris.address), ("sr", ehr.address)]
        )
        stow = node.settings.stow_options()

        def attempt(object_id: int, dest: str, n: int) -> bool:
            return attempt_delivery(
                pipeline.sessions,
                node.settings.storage.outputs_dir,
                object_id,
                parse_destination(dest),
                n,
                SenderOptions(dimse_timeout=5),
                final=False,
                stow=stow,
            )

        ris.answer = "AE"  # the RIS refuses the first time: a retry that says why
        for object_id, dest in outcome.to_deliver:
            assert attempt(object_id, dest, 1) is (dest != ris.address), dest
        (retry,) = rows(node.engine, Delivery, Delivery.outcome == "retry")
        assert retry.destination == ris.address and "answered AE" in (retry.error or "")
        assert _study(node, study.study_instance_uid).state == DELIVERING
        ris.answer = "AA"
        (sr_id,) = [oid for oid, dest in outcome.to_deliver if dest == ris.address]
        assert attempt(sr_id, ris.address, 2)
        assert _study(node, study.study_instance_uid).state == DONE
        (result,) = rows(node.engine, StudyResult, StudyResult.study_id == study.id)
        assert (result.label, result.band, result.priority) == ("covid", "flagged", "urgent")
        first, message = ris.received  # the retry is the same message: the same control ID
        assert first.split("|")[9] == message.split("|")[9]
        obx = {
            s.split("|")[3].split("^")[0]: s.split("|")[5]
            for s in message.split("\r")
            if s.startswith("OBX|")
        }
        (priority,) = [
            _value(o)
            for o in ehr.of_kind("Observation")
            if o["code"]["coding"][0]["code"] == "TRIAGE-PRIORITY"
        ]
        assert obx["TRIAGE-PRIORITY"].split("^")[0] == priority == result.priority.upper()
        (report,) = ehr.of_kind("DiagnosticReport")
        assert obx["121071"].split("^")[0] == report["conclusionCode"][0]["coding"][0]["code"]
        assert ehr.posts == 1 and len(pacs.received()) == 2
    finally:
        ris.stop()
        ehr.stop()
