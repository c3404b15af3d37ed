"""HL7 v2 results: an ORU^R01 per study, made from the SR, sent over MLLP with the outbox's
retries; a real loopback receiver answers AA, AE, AR, garbage or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_node import hl7
from dicom_node.addresses import Hl7Destination, carries, parse_destination
from tests import factories
from tests.helpers import our_sr_file
from tests.mllp import MllpPeer


@pytest.fixture
def peer() -> Iterator[MllpPeer]:
    server = MllpPeer()
    yield server
    server.stop()


def test_the_destination_parses_and_takes_only_the_result() -> None:
    dest = parse_destination("hl7+mllp://ris.example:2575")
    assert (
        dest == Hl7Destination("ris.example", 2575) and str(dest) == "hl7+mllp://ris.example:2575"
    )
    assert str(parse_destination("hl7+mllp://[::1]:2575/")) == "hl7+mllp://[::1]:2575"
    assert carries(dest, "sr") and not carries(dest, "sc")
    for bad in ("hl7+mllp://host", "hl7+mllp://host:0", "hl7+mllp://:2575", "hl7+tcp://h:1"):
        with pytest.raises(ValueError):
            parse_destination(bad)


def test_the_message_says_what_the_sr_says_and_validates(tmp_path: Path) -> None:
    from hl7apy.parser import parse_message

    path = our_sr_file(
        tmp_path, PatientID="P|1^x", PatientName="DOE^JANE", AccessionNumber="ACC&42"
    )
    sr = pydicom.dcmread(path)
    result = hl7.result_from_sr(sr)
    er7 = hl7.oru_r01(result)
    message = parse_message(er7, find_groups=True)  # hl7apy's parser reads it back
    message.validate()
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_10.to_er7() == hl7.control_id(result)
    segments = er7.split("\r")
    pid = next(s for s in segments if s.startswith("PID|")).split("|")
    assert pid[3] == "P\\F\\1\\S\\x" and pid[5] == "DOE^JANE"  # delimiters escaped, PN mapped
    obr = next(s for s in segments if s.startswith("OBR|")).split("|")
    assert obr[3] == "ACC\\T\\42" and obr[25] == "P"  # accession as filler order; preliminary
    obx = {s.split("|")[3].split("^")[0]: s.split("|") for s in segments if s.startswith("OBX|")}
    assert obx["121071"][5] == "840539006^COVID-19^SCT"
    assert obx["TRIAGE-BAND"][5] == "10828004^Positive^SCT"
    assert obx["TRIAGE-PRIORITY"][5] == "URGENT^Urgent^99CXRTRIAGE"
    assert obx["P-COVID"][2] == "NM" and float(obx["P-COVID"][5]) == 86.0
    assert obx["110180"][5] == sr.StudyInstanceUID
    assert "not for diagnosis" in obx["121106"][5]
    assert any(s.startswith("NTE|") and "not for diagnosis" in s for s in segments)
    # The same SR is the same message: a receiver can recognise a retry or a replay.
    assert hl7.control_id(hl7.result_from_sr(pydicom.dcmread(path))) == hl7.control_id(result)


def test_a_long_summary_is_split_into_tx_lines_that_validate(tmp_path: Path) -> None:
    """A real study's summary runs past the 199 characters one OBX-5 repetition holds."""
    from dataclasses import replace

    from hl7apy.parser import parse_message

    result = hl7.result_from_sr(pydicom.dcmread(our_sr_file(tmp_path)))
    clauses = ["AI triage, not for diagnosis: COVID-19 flagged: 98.7% (flag at 68.5%)"] * 6
    long = replace(result, summary="; ".join([*clauses, "x|" * 150]))
    er7 = hl7.oru_r01(long)
    parse_message(er7, find_groups=True).validate()
    (comment,) = [s for s in er7.split("\r") if s.split("|")[3:4] == ["121106^Comment^DCM"]]
    repetitions = comment.split("|")[5].split("~")
    assert len(repetitions) > 2 and all(len(r) <= hl7.MAX_LINE for r in repetitions)
    assert "; ".join(hl7.lines("; ".join(clauses))) == "; ".join(clauses)
    assert "".join(hl7.lines("y" * 500)) == "y" * 500


def test_not_our_sr_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="not a cxr-triage SR"):
        hl7.result_from_sr(factories.structured_report())


@pytest.mark.parametrize(
    ("answer", "ok", "reason"),
    [
        ("AA", True, None),
        ("AE", False, "answered AE: patient unknown"),
        ("AR", False, "answered AR: not accepted here"),
        ("garbage", False, "malformed ACK"),
        ("close", False, "closed the connection without an ACK"),
        ("hang", False, "no ACK within 1 s"),
    ],
)
def test_each_answer_is_a_delivery_or_a_failed_attempt_with_its_reason(
    peer: MllpPeer, tmp_path: Path, answer: str, ok: bool, reason: str | None
) -> None:
    peer.answer = answer
    dest = Hl7Destination("127.0.0.1", peer.port)
    (result,) = hl7.send_results([our_sr_file(tmp_path)], dest, timeout=1.0).results
    assert result.ok is ok, result
    if reason:
        assert reason in (result.error or "")
    assert len(peer.received) == 1 and peer.received[0].startswith("MSH|^~\\&|CXR_TRIAGE|")


def test_no_receiver_is_a_failed_attempt(tmp_path: Path) -> None:
    from tests.services import free_port

    dest = Hl7Destination("127.0.0.1", free_port())
    (result,) = hl7.send_results([our_sr_file(tmp_path)], dest, timeout=1.0).results
    assert not result.ok and "Connection refused" in (result.error or "")


def test_an_sc_file_is_no_result_to_send(tmp_path: Path) -> None:
    sc = tmp_path / "sc.dcm"
    factories.write(factories.radiograph(rows=64, columns=64), sc)
    dest = Hl7Destination("127.0.0.1", 9)
    (result,) = hl7.send_results([sc], dest, timeout=1.0).results
    assert not result.ok and "no result to send" in (result.error or "")
