"""The study's result as an HL7 v2.5.1 ORU^R01, sent over MLLP to a RIS or worklist.

The message is made from the study's SR, the one record of the result (``sr.py``), so it can
say nothing the SR does not: patient and order identifiers, the study's finding, band and
priority, each class's probability (the highest over the study's images), the summary with
"not for diagnosis", and the model with its operating point. It is built and validated with
hl7apy against the 2.5.1 structures. Its control ID comes from the SR's UID, so a retried or
replayed message is the same message and a receiver can recognise it.

A receiver's AA is a delivery. AE, AR, a negative commit ACK, a malformed ACK, no ACK in time or
a refused connection are failed attempts with the reason, retried and dead-lettered like any
other delivery.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import pydicom

from dicom_node.addresses import Hl7Destination
from dicom_node.results.study_result import (
    ALGORITHM,
    COMMENT,
    FINDING,
    StudyResult,
    result_from_sr,
)
from dicom_node.results.wording import NOT_FOR_DIAGNOSIS
from dicom_node.sender import SendResult, SendSummary

logger = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"  # MLLP framing
MAX_ACK_BYTES = 1 << 20
SENDING_APPLICATION = "CXR_TRIAGE"


class Hl7Error(RuntimeError):
    """The receiver did not accept the message; the text says why."""


def escape(text: str) -> str:
    """HL7 escape sequences for the delimiters (``|^~\\&``) inside one value."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return out.replace("\r", " ").replace("\n", " ")


def _ce(code: tuple[str, str, str]) -> str:
    value, meaning, scheme = (escape(part) for part in code)
    return f"{value}^{meaning}^{scheme}"


#: The longest text one OBX-5 repetition may hold (hl7apy's 2.5.1 tables: 199).
MAX_LINE = 199


def lines(text: str, width: int = MAX_LINE) -> list[str]:
    """``text`` as lines of at most ``width`` characters (escapes included), broken after
    "; " where it can be and hard where it cannot."""
    out: list[str] = []
    for clause in text.split("; "):
        piece = clause if not out else f"; {clause}"
        if out and len(escape(out[-1] + piece)) <= width:
            out[-1] += piece
            continue
        piece = piece.removeprefix("; ")
        while len(escape(piece)) > width:
            cut = width
            while len(escape(piece[:cut])) > width:
                cut -= 1
            out.append(piece[:cut])
            piece = piece[cut:]
        out.append(piece)
    return out


def control_id(result: StudyResult) -> str:
    """MSH-10, at most 20 characters: the same for every send of the same SR."""
    return hashlib.sha256(result.sr_uid.encode()).hexdigest()[:20].upper()


def oru_r01(result: StudyResult, *, facility: str = "cxr-triage") -> str:
    """The ORU^R01 (ER7, segments separated by CR), validated against HL7 2.5.1.

    Raises
    ------
    hl7apy.exceptions.ValidationError
        If the message does not conform (a bug here, never the receiver's problem).
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message

    m = Message("ORU_R01", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
    m.msh.msh_3 = SENDING_APPLICATION
    m.msh.msh_4 = escape(facility)
    m.msh.msh_7 = datetime.now().strftime("%Y%m%d%H%M%S")
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = control_id(result)
    m.msh.msh_11 = "P"
    m.msh.msh_12 = "2.5.1"
    m.msh.msh_18 = "UNICODE UTF-8"
    patient_result = m.add_group("ORU_R01_PATIENT_RESULT")
    pid = patient_result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = escape(result.patient_id) or "UNKNOWN"
    # DICOM PN and HL7 XPN share the order family^given^middle^prefix^suffix.
    pid.pid_5 = "^".join(escape(part) for part in result.patient_name.split("^")[:5]) or "UNKNOWN"
    if result.birth_date:
        pid.pid_7 = escape(result.birth_date)
    if result.sex in ("M", "F", "O"):
        pid.pid_8 = result.sex
    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1 = "RE"  # observations to follow
    if result.accession:
        order.orc.orc_3 = escape(result.accession)
    obr = order.obr
    obr.obr_1 = "1"
    if result.accession:
        obr.obr_3 = escape(result.accession)  # radiology's filler order number
    obr.obr_4 = "399208008^Plain chest X-ray^SCT"
    if result.when:
        obr.obr_7 = result.when
        obr.obr_22 = result.when
    obr.obr_25 = "P"  # preliminary, as the SR: an AI triage result, not a report
    observations: list[tuple[str, str, str | list[str], str]] = [
        ("ST", "110180^Study Instance UID^DCM", escape(result.study_uid), ""),
        ("CE", f"{FINDING}^Finding^DCM", _ce(result.finding), ""),
        ("CE", "TRIAGE-BAND^Triage result band^99CXRTRIAGE", _ce(result.band), ""),
        ("CE", "TRIAGE-PRIORITY^Triage priority^99CXRTRIAGE", _ce(result.priority), ""),
        *(
            ("NM", _ce(name), f"{value:g}", "%^percent^UCUM")
            for name, value in result.probabilities.items()
        ),
        ("TX", f"{COMMENT}^Comment^DCM", [escape(line) for line in lines(result.summary)], ""),
        *(
            ("ST", f"{code}^{meaning}^DCM", escape(value), "")
            for code, (label, meaning) in ALGORITHM.items()
            for value in result.algorithm.get(label, [])
        ),
    ]
    for n, (kind, name, value, unit) in enumerate(observations, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(n)
        obx.obx_2 = kind
        obx.obx_3 = name
        # TX: one repetition per line (a repetition holds at most 199 characters in 2.5.1).
        for line in [value] if isinstance(value, str) else value:
            obx.add_field("OBX_5").value = line
        if unit:
            obx.obx_6 = unit
        obx.obx_11 = "P"
    nte = order.add_segment("NTE")
    nte.nte_1 = "1"
    nte.nte_3 = f"AI triage result, {NOT_FOR_DIAGNOSIS}"
    m.validate()
    return str(m.to_er7())


def read_ack(ack: str) -> tuple[str, str]:
    """(MSA-1, MSA-3) of an ACK; raises :class:`Hl7Error` if it is not one."""
    segments = [s for s in ack.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise Hl7Error(f"malformed ACK (no MSH): {ack[:80]!r}")
    sep = segments[0][3]
    msa = [s.split(sep) for s in segments if s.startswith("MSA" + sep)]
    if not msa or len(msa[0]) < 2 or not msa[0][1]:
        raise Hl7Error(f"malformed ACK (no MSA): {ack[:80]!r}")
    return msa[0][1], msa[0][3] if len(msa[0]) > 3 else ""


def send_message(message: str, host: str, port: int, *, timeout: float = 30.0) -> str:
    """Send one MLLP frame and return the ACK's text; raises OSError or :class:`Hl7Error`."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(START + message.encode("utf-8") + END)
        received = b""
        while not received.endswith(END):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Hl7Error(f"no ACK within {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError as exc:
                raise Hl7Error(f"no ACK within {timeout:g} s") from exc
            if not chunk:
                raise Hl7Error("the receiver closed the connection without an ACK")
            received += chunk
            if len(received) > MAX_ACK_BYTES:
                raise Hl7Error("ACK longer than 1 MiB, not read")
    return received.removeprefix(START).removesuffix(END).decode("utf-8", "replace")


def send_results(
    paths: Iterable[Path], dest: Hl7Destination, *, timeout: float = 30.0
) -> SendSummary:
    """One ORU^R01 per SR file, each on its own connection; AA is a delivery."""
    return SendSummary.each(paths, lambda path: _send_one(path, dest, timeout))


def _send_one(path: Path, dest: Hl7Destination, timeout: float) -> SendResult:
    try:
        sr = pydicom.dcmread(path)
        result = result_from_sr(sr)
    except Exception as exc:
        return SendResult(str(path), "", None, f"no result to send from {path.name}: {exc}")
    message = oru_r01(result)
    try:
        code, text = read_ack(send_message(message, dest.host, dest.port, timeout=timeout))
    except (OSError, Hl7Error) as exc:
        return SendResult(str(path), result.sr_uid, None, f"HL7 {dest}: {exc}")
    if code not in ("AA", "CA"):
        why = f"HL7 {dest} answered {code}" + (f": {text}" if text else "")
        return SendResult(str(path), result.sr_uid, None, why)
    logger.info("ORU^R01 %s for study %s: %s", control_id(result), result.study_uid, code)
    return SendResult(str(path), result.sr_uid, 0)
