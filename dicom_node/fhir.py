"""The study's result as a FHIR R4 transaction Bundle, POSTed to a FHIR server.

Made from the study's SR (:mod:`dicom_node.results.study_result`), like the HL7 message: a
``DiagnosticReport`` (preliminary; the finding as its conclusion code, the summary with "not for
diagnosis" as its conclusion, the study by its UID) with one ``Observation`` per class
probability and one each for the finding, band and priority, and the model as a ``Device``.
Every resource is built and validated with ``fhir.resources`` (R4B, which reads and writes R4
for these resources) before anything is sent.

Each entry is a conditional update on an identifier derived from the SR's UID, so a retried or
replayed Bundle updates what the first one created instead of adding copies. A 2xx answer is a
delivery; anything else (an OperationOutcome, refused, timed out, TLS) is a failed attempt
with the reason, retried and dead-lettered like a C-STORE.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom

from dicom_node.addresses import FhirDestination
from dicom_node.results.study_result import StudyResult, result_from_sr
from dicom_node.results.wording import NOT_FOR_DIAGNOSIS
from dicom_node.sender import SendResult, SendSummary
from dicom_node.stow import StowOptions, post

logger = logging.getLogger(__name__)

SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    "LN": "http://loinc.org",
    "99CXRTRIAGE": "urn:cxr-triage:codes",
}
UID_SYSTEM = "urn:dicom:uid"
PATIENT_ID_SYSTEM = "urn:cxr-triage:patient-id"  # the images' PatientID, issuer unknown
MODEL_SYSTEM = "urn:cxr-triage:model"


def _concept(code: tuple[str, str, str]) -> dict[str, Any]:
    value, meaning, scheme = code
    system = SYSTEMS.get(scheme, f"urn:cxr-triage:scheme:{scheme}")
    return {"coding": [{"system": system, "code": value, "display": meaning}], "text": meaning}


def _full_url(result: StudyResult, name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, f'{result.sr_uid}/{name}')}"


def _entry(resource: Any, full_url: str, identifier: dict[str, str]) -> dict[str, Any]:
    kind = resource.get_resource_type()
    search = f"identifier={identifier['system']}|{identifier['value']}"
    return {
        "fullUrl": full_url,
        "resource": json.loads(resource.model_dump_json(exclude_none=True)),
        "request": {"method": "PUT", "url": f"{kind}?{search}"},
    }


def _effective(result: StudyResult) -> str:
    w = result.when
    if len(w) >= 14:
        return f"{w[:4]}-{w[4:6]}-{w[6:8]}T{w[8:10]}:{w[10:12]}:{w[12:14]}Z"
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bundle(result: StudyResult) -> dict[str, Any]:
    """The transaction Bundle, validated by fhir.resources; raises pydantic's ValidationError
    if it does not conform (a bug here, never the server's problem)."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.device import Device
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.observation import Observation

    when = _effective(result)
    subject = {
        "identifier": {"system": PATIENT_ID_SYSTEM, "value": result.patient_id or "UNKNOWN"},
        "display": result.patient_name.replace("^", " ").strip() or None,
    }
    algorithm = result.algorithm
    model_id = {
        "system": MODEL_SYSTEM,
        "value": "/".join(
            [*algorithm.get("name", ["?"])[:1], *algorithm.get("version", ["?"])[:1]]
        ),
    }
    device_url = _full_url(result, "device")
    device = Device(
        identifier=[model_id],
        deviceName=[{"name": algorithm.get("name", ["?"])[0], "type": "model-name"}],
        version=[{"value": v} for v in algorithm.get("version", [])],
        property=[
            {"type": {"text": "parameter"}, "valueCode": [{"text": p}]}
            for p in algorithm.get("parameter", [])
        ],
        note=[{"text": f"AI triage, {NOT_FOR_DIAGNOSIS}"}],
    )
    study_ref = {"identifier": {"system": UID_SYSTEM, "value": f"urn:oid:{result.study_uid}"}}
    observations: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("finding", _concept(("121071", "Finding", "DCM")), {
            "valueCodeableConcept": _concept(result.finding)}),
        ("band", _concept(("TRIAGE-BAND", "Triage result band", "99CXRTRIAGE")), {
            "valueCodeableConcept": _concept(result.band)}),
        ("priority", _concept(("TRIAGE-PRIORITY", "Triage priority", "99CXRTRIAGE")), {
            "valueCodeableConcept": _concept(result.priority)}),
        *(
            (name[0], _concept(name), {"valueQuantity": {
                "value": value, "unit": "%", "system": SYSTEMS["UCUM"], "code": "%"}})
            for name, value in result.probabilities.items()
        ),
    ]  # fmt: skip
    entries = []
    observation_urls = []
    for name, code, value in observations:
        identifier = {"system": UID_SYSTEM, "value": f"urn:oid:{result.sr_uid}/{name}"}
        url = _full_url(result, name)
        observation_urls.append(url)
        obs = Observation(
            identifier=[identifier],
            status="preliminary",
            code=code,
            subject=subject,
            effectiveDateTime=when,
            device={"reference": device_url},
            derivedFrom=[study_ref],
            **value,
        )
        entries.append(_entry(obs, url, identifier))
    report_id = {"system": UID_SYSTEM, "value": f"urn:oid:{result.sr_uid}"}
    report = DiagnosticReport(
        identifier=[report_id],
        status="preliminary",
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                               "code": "RAD", "display": "Radiology"}], "text": "Radiology"}],
        code=_concept(("399208008", "Plain chest X-ray", "SCT")),
        subject=subject,
        effectiveDateTime=when,
        issued=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        performer=[{"reference": device_url, "display": "cxr-triage (AI, not for diagnosis)"}],
        result=[{"reference": url} for url in observation_urls],
        imagingStudy=[study_ref],
        conclusion=result.summary,
        conclusionCode=[_concept(result.finding)],
    )  # fmt: skip
    entries.insert(0, _entry(report, _full_url(result, "report"), report_id))
    entries.append(_entry(device, device_url, model_id))
    doc = Bundle(type="transaction", entry=entries)
    return dict(json.loads(doc.model_dump_json(exclude_none=True)))


def _why(answer: bytes) -> str:
    """The first issue of an OperationOutcome, or the start of whatever came back."""
    try:
        doc = json.loads(answer or b"{}")
        issue = doc.get("issue", [{}])[0] if isinstance(doc, dict) else {}
        text = issue.get("diagnostics") or issue.get("details", {}).get("text")
        if text:
            return str(text)[:300]
    except (ValueError, AttributeError, IndexError):
        pass
    return answer[:120].decode("utf-8", "replace")


def send_results(
    paths: Iterable[Path], dest: FhirDestination, options: StowOptions | None = None
) -> SendSummary:
    """One transaction Bundle per SR file, each in a request of its own; 2xx is a delivery."""
    options = options or StowOptions()
    return SendSummary.each(paths, lambda path: _send_one(path, dest, options))


def _send_one(path: Path, dest: FhirDestination, options: StowOptions) -> SendResult:
    try:
        result = result_from_sr(pydicom.dcmread(path))
    except Exception as exc:
        return SendResult(str(path), "", None, f"no result to send from {path.name}: {exc}")
    body = json.dumps(bundle(result)).encode()
    url = urlsplit(dest.base_url)
    headers = {
        "Content-Type": "application/fhir+json",
        "Accept": "application/fhir+json",
        **options.headers(),
    }
    answered = post(url, url.path or "/", body, headers, options)
    if isinstance(answered, str):
        return SendResult(str(path), result.sr_uid, None, f"{dest}: {answered}")
    status, reason, answer = answered
    if 200 <= status < 300:
        logger.info("FHIR Bundle for study %s: HTTP %d", result.study_uid, status)
        return SendResult(str(path), result.sr_uid, 0)
    return SendResult(
        str(path), result.sr_uid, None, f"{dest}: HTTP {status} {reason}: {_why(answer)}"
    )
