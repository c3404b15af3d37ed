"""DICOMweb STOW-RS: results POSTed as ``multipart/related; type="application/dicom"``.

The same results as a C-STORE (:class:`dicom_node.sender.SendSummary`), so delivery, retries,
dead letters and replay treat both kinds of destination alike: a file the service stored (HTTP
200 without a failed SOP in the answer) is status ``0x0000``; anything else (202 with a failed
SOP, 4xx, 5xx, refused, unresolvable, timed out) has no status and says why in ``error``.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import ssl
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import pydicom

from dicom_node.addresses import StowDestination
from dicom_node.sender import SendResult, SendSummary

STORED = 0x0000  # as a C-STORE would say it
# A STOW answer is a short JSON document; one far longer is not read (nor held in memory).
MAX_ANSWER_BYTES = 4 * 2**20


@dataclass(frozen=True)
class StowOptions:
    """Authentication, TLS and timeout for STOW-RS requests."""

    bearer_token: str | None = None
    basic_auth: str | None = None  # "user:password"
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 60.0
    max_answer_bytes: int = MAX_ANSWER_BYTES

    def headers(self) -> dict[str, str]:
        if self.bearer_token:
            return {"Authorization": f"Bearer {self.bearer_token}"}
        if self.basic_auth:
            token = base64.b64encode(self.basic_auth.encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}


def _body(data: bytes, boundary: str) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def _failed_in(response: bytes) -> str | None:
    """Why a 200/202 answer still lists the instance as failed (FailedSOPSequence, PS3.18)."""
    try:
        doc = json.loads(response or b"{}")
    except ValueError:
        return None
    failed = doc.get("00081198", {}).get("Value") if isinstance(doc, dict) else None
    if not failed:
        return None
    reason = failed[0].get("00081197", {}).get("Value", ["?"])[0]
    return f"failed SOP (reason 0x{int(reason):04X})" if isinstance(reason, int) else "failed SOP"


def stow_files(
    paths: Iterable[Path], dest: StowDestination, options: StowOptions | None = None
) -> SendSummary:
    """POST each file to ``dest`` in a request of its own; one result per file, in order."""
    options = options or StowOptions()
    url = urlsplit(dest.base_url)
    return SendSummary.each(paths, lambda path: _stow_one(path, url, dest, options))


def _stow_one(
    path: Path, url: SplitResult, dest: StowDestination, options: StowOptions
) -> SendResult:
    try:
        data = path.read_bytes()
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
    except Exception as exc:
        return SendResult(str(path), "", None, f"not a DICOM file: {exc}")
    boundary = uuid.uuid4().hex
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
        **options.headers(),
    }
    answered = post(url, f"{url.path}/studies", _body(data, boundary), headers, options)
    if isinstance(answered, str):
        return SendResult(str(path), uid, None, f"{dest}: {answered}")
    status, why, answer = answered
    failure = _failed_in(answer) if status in (200, 202) else None
    if failure is None and status == 200:
        return SendResult(str(path), uid, STORED)
    reason = f"HTTP {status} {why}" + (f": {failure}" if failure else "")
    return SendResult(str(path), uid, None, f"{dest}: {reason}")


def post(
    url: SplitResult, target: str, body: bytes, headers: dict[str, str], options: StowOptions
) -> tuple[int, str, bytes] | str:
    """POST ``body`` to ``target`` on ``url``'s server: (status, reason, answer), or why not
    (refused, unresolvable, timed out, TLS, https without trust, an answer too long to read).
    Shared by STOW-RS and FHIR."""
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        if options.ssl_context is None:
            return "https needs CXR_SEND_TLS_CA or CXR_SEND_TLS_SYSTEM_CA=true"
        conn = http.client.HTTPSConnection(
            url.netloc, timeout=options.timeout, context=options.ssl_context
        )
    else:
        conn = http.client.HTTPConnection(url.netloc, timeout=options.timeout)
    try:
        conn.request("POST", target, body=body, headers=headers)
        rsp = conn.getresponse()
        answer = rsp.read(options.max_answer_bytes + 1)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if len(answer) > options.max_answer_bytes:
        return (
            f"HTTP {rsp.status} answer longer than {options.max_answer_bytes // 2**20} MiB, "
            "not read"
        )
    return rsp.status, rsp.reason, answer
