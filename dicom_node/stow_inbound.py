"""STOW-RS into the node (DICOMweb, PS3.18 10.5): ``POST .../studies[/{study}]``.

A sender that speaks DICOMweb rather than DIMSE (a web uploader, a cloud PACS, Orthanc's
DICOMweb client) posts ``multipart/related; type="application/dicom"``. Each part takes the
C-STORE path (:class:`dicom_node.intake.Intake`): the same checks, eligibility, fsync into the
spool and committed row before the answer, idempotency and audit (the request is recorded as
an association whose calling AE is ``STOW-RS``). The answer is 200 when every part was stored,
202 when some failed, 409 when none was, with the PS3.18 response dataset (Referenced and
Failed SOP Sequences, the failure reason a C-STORE would have had).

The body goes to a file in the spool's ``incoming/`` as it arrives (never all in memory),
bounded by ``max_bytes`` and by the spool's free space; each part is then copied to its own
file there and handed to the intake. A bearer token is required, as for the audit API.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import mmap
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom

from dicom_node.intake import Intake
from dicom_node.interfaces import NodeRecorder, PeerInfo
from dicom_node.spool import LowDiskSpaceError
from dicom_node.statuses import CANNOT_UNDERSTAND, SUCCESS

logger = logging.getLogger(__name__)

#: The calling AE title a STOW-RS request is recorded under.
STOW_CALLER = "STOW-RS"
_PATH = re.compile(r"^(?:/[\w.-]+)*/studies(?:/([0-9.]{1,64}))?/?$")
_CHUNK = 2**20
#: How often (bytes) a chunked body's size is checked against the limit and the free space.
_CHECK_EVERY = 64 * 2**20


class StowRequestError(ValueError):
    """A request that cannot be read as a STOW-RS upload: the HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class StowConfig:
    bind: str
    port: int
    token: str
    called_ae: str = "CXR_TRIAGE"
    max_bytes: int = 2 * 2**30


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body.

    Raises :class:`StowRequestError` (415) for any other media type.
    """
    kind, _, params = content_type.partition(";")
    fields = dict(
        (k.strip().lower(), v.strip().strip('"'))
        for k, _, v in (p.partition("=") for p in params.split(";"))
        if k.strip()
    )
    if kind.strip().lower() != "multipart/related" or fields.get("type", "").lower() not in (
        "application/dicom",
        "",
    ):
        raise StowRequestError(415, 'expected multipart/related; type="application/dicom"')
    boundary = fields.get("boundary", "")
    # RFC 2046 says at most 70 characters; Orthanc 1.10 sends 73: be lenient, but bounded.
    if not 0 < len(boundary) <= 200:
        raise StowRequestError(400, f"no usable boundary in Content-Type {content_type!r}")
    return boundary


def parts(body: mmap.mmap | bytes, boundary: str) -> Iterator[tuple[dict[str, str], int, int]]:
    """Each part's headers and the start and end of its content in ``body``.

    Raises :class:`StowRequestError` (400) for a body that is not a closed multipart.
    """
    delimiter = b"--" + boundary.encode("latin-1")
    at = body.find(delimiter)
    if at < 0:
        raise StowRequestError(400, "the body holds no part")
    while True:
        at += len(delimiter)
        if body[at : at + 2] == b"--":
            return
        header_end = body.find(b"\r\n\r\n", at)
        if header_end < 0:
            raise StowRequestError(400, "a part has no end of headers")
        headers: dict[str, str] = {}
        for line in bytes(body[at:header_end]).decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        start = header_end + 4
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise StowRequestError(400, "the last part is not closed (truncated body?)")
        yield headers, start, end
        at = end + 2


def _uids(path: Path) -> tuple[str, str]:
    """SOP Class and Instance UIDs of a part, for the response ("" where unreadable)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[0x00080016, 0x00080018])
        return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
    except Exception:
        return "", ""


def response_dataset(stored: list[tuple[str, str]], failed: list[tuple[str, str, int]]) -> Any:
    """The PS3.18 STOW-RS response in DICOM JSON."""

    def ref(cls: str, uid: str) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if cls:
            item["00081150"] = {"vr": "UI", "Value": [cls]}
        if uid:
            item["00081155"] = {"vr": "UI", "Value": [uid]}
        return item

    out: dict[str, Any] = {}
    if stored:
        out["00081199"] = {"vr": "SQ", "Value": [ref(c, u) for c, u in stored]}
    if failed:
        out["00081198"] = {
            "vr": "SQ",
            "Value": [
                {**ref(c, u), "00081197": {"vr": "US", "Value": [status]}}
                for c, u, status in failed
            ],
        }
    return out


class StowServer:
    """The STOW-RS endpoint of one node process: :meth:`start`, then :meth:`stop`."""

    def __init__(self, config: StowConfig, intake: Intake, recorder: NodeRecorder) -> None:
        self.config = config
        self.intake = intake
        self.recorder = recorder
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("STOW-RS endpoint is not running")
        return int(self._server.server_address[1])

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                try:
                    code, body = server.handle(self)
                except StowRequestError as exc:
                    code, body = exc.status, {"error": str(exc)}
                    logger.warning(
                        "STOW-RS from %s refused (%d): %s", self.client_address[0], code, exc
                    )
                    self.close_connection = True  # the rest of the body was not read
                except Exception as exc:
                    logger.exception("STOW-RS request failed")
                    code, body = 500, {"error": f"internal error: {exc}"}
                    self.close_connection = True
                data = json.dumps(body).encode()
                self.send_response(code)
                kind = "application/dicom+json" if code in (200, 202, 409) else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                if code == 401:
                    self.send_header("WWW-Authenticate", "Bearer")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug("STOW-RS %s", fmt % args)

        self._server = ThreadingHTTPServer((self.config.bind, self.config.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stow-rs", daemon=True
        )
        self._thread.start()
        logger.info("STOW-RS endpoint on %s:%d", self.config.bind, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    # -- one request ----------------------------------------------------------------------
    def _authorised(self, header: str | None) -> bool:
        scheme, _, token = (header or "").partition(" ")
        # As bytes: a header may hold any Latin-1 text, and compare_digest refuses non-ASCII str.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode("latin-1", "replace"), self.config.token.encode()
        )

    def handle(self, request: BaseHTTPRequestHandler) -> tuple[int, Any]:
        """Read, store and answer one POST: the HTTP status and the JSON body."""
        match = _PATH.match(request.path.split("?", 1)[0])
        if match is None:
            raise StowRequestError(404, "POST to .../studies or .../studies/{StudyInstanceUID}")
        if not self._authorised(request.headers.get("Authorization")):
            raise StowRequestError(401, "missing or wrong bearer token")
        boundary = boundary_of(request.headers.get("Content-Type", ""))
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        length_text = request.headers.get("Content-Length")
        length: int | None = None
        if not chunked:
            if length_text is None or not length_text.isdigit():
                raise StowRequestError(411, "a Content-Length (or chunked encoding) is required")
            length = int(length_text)
            self._check_size(length)
        host, port = request.client_address[:2]
        assoc_id = self.recorder.association_started(
            PeerInfo(STOW_CALLER, self.config.called_ae, str(host), int(port))
        )
        outcome = "aborted"
        try:
            result = self._store(request, length, boundary, assoc_id, match.group(1))
            outcome = "released"
            return result
        finally:
            try:
                self.recorder.association_ended(assoc_id, outcome)
            except Exception:
                logger.exception("could not record the end of STOW-RS request %d", assoc_id)

    def _store(
        self,
        request: BaseHTTPRequestHandler,
        length: int | None,
        boundary: str,
        assoc_id: int,
        study: str | None,
    ) -> tuple[int, Any]:
        incoming = self.intake.spool.incoming
        fd, name = tempfile.mkstemp(dir=incoming, prefix="stow-", suffix=".body")
        body_path = Path(name)
        try:
            with os.fdopen(fd, "w+b") as fh:
                written = 0
                for piece in self._body(request, length):
                    if (
                        length is None
                        and (written + len(piece)) // _CHECK_EVERY > written // _CHECK_EVERY
                    ):
                        self._check_size(written + len(piece))
                    written += len(piece)
                    fh.write(piece)
                fh.flush()
                if written == 0:
                    raise StowRequestError(400, "the body is empty")
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as body:
                    stored, failed = self._parts(body, boundary, assoc_id, study)
        finally:
            body_path.unlink(missing_ok=True)
        code = 200 if not failed else 409 if not stored else 202
        logger.info("STOW-RS request %d: %d stored, %d failed", assoc_id, len(stored), len(failed))
        return code, response_dataset(stored, failed)

    def _check_size(self, length: int) -> None:
        """Refuse a body over the limit (413) or one the spool has no room for (503)."""
        if length > self.config.max_bytes:
            raise StowRequestError(
                413, f"{length} bytes is over the limit of {self.config.max_bytes}"
            )
        try:
            self.intake.spool.check_space(2 * length)  # the body, then its parts
        except LowDiskSpaceError as exc:
            raise StowRequestError(503, str(exc)) from exc

    @staticmethod
    def _body(request: BaseHTTPRequestHandler, length: int | None) -> Iterator[bytes]:
        """The request body in pieces: ``length`` bytes, or chunked (``length`` None)."""
        rfile = request.rfile
        if length is not None:
            left = length
            while left:
                piece = rfile.read(min(_CHUNK, left))
                if not piece:
                    raise StowRequestError(400, f"the body ended {left} bytes short")
                left -= len(piece)
                yield piece
            return
        while True:
            try:
                size = int(rfile.readline(1024).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise StowRequestError(400, "malformed chunked body") from None
            if size == 0:
                for _ in range(100):  # trailers, bounded
                    if rfile.readline(8192) in (b"\r\n", b"\n", b""):
                        return
                raise StowRequestError(400, "too many trailers in the chunked body")
            left = size
            while left:
                piece = rfile.read(min(_CHUNK, left))
                if not piece:
                    raise StowRequestError(400, "the chunked body ended early")
                left -= len(piece)
                yield piece
            rfile.readline(8)  # the CRLF after each chunk

    def _parts(
        self, body: mmap.mmap, boundary: str, assoc_id: int, study: str | None
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
        stored: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        for headers, start, end in parts(body, boundary):
            kind = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
            if kind != "application/dicom":
                reason = f"a part of type {kind!r}, not application/dicom"
                failed.append(("", "", self.intake.fail(assoc_id, "", CANNOT_UNDERSTAND, reason)))
                continue
            fd, name = tempfile.mkstemp(dir=self.intake.spool.incoming, suffix=".dcm")
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as out:
                    for at in range(start, end, _CHUNK):
                        out.write(body[at : min(at + _CHUNK, end)])
                cls, uid = _uids(path)
                status = self.intake.accept(path, assoc_id, None, study)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
            if status == SUCCESS:
                stored.append((cls, uid))
            else:
                failed.append((cls, uid, status))
        return stored, failed
