"""DICOMweb STOW-RS destinations: parsed from CXR_DESTINATIONS, sent with retries like C-STORE."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.addresses import Destination, StowDestination, parse_destinations
from dicom_node.stow import StowOptions, stow_files
from tests import factories
from tests.helpers import pipeline_worker, rows, send, wait_for
from tests.orthanc import Orthanc
from worker.db.models import DONE, Delivery, Study
from worker.settings import Settings, load_settings


def test_destinations_of_both_kinds_parse() -> None:
    parsed = parse_destinations("PACS@10.0.0.5:104, stow+https://pacs.example/dicom-web/")
    assert parsed == [
        Destination("PACS", "10.0.0.5", 104),
        StowDestination("https://pacs.example/dicom-web"),
    ]
    assert str(parsed[1]) == "stow+https://pacs.example/dicom-web"
    for bad in ("stow+ftp://x/y", "stow+http://user:secret@host/dicom-web", "stow+http://"):
        with pytest.raises(ValueError, match="stow\\+http"):
            parse_destinations(bad)
    settings = load_settings(destinations="stow+http://127.0.0.1:8042/dicom-web")
    assert settings.delivery.destinations == [StowDestination("http://127.0.0.1:8042/dicom-web")]
    with pytest.raises(ValueError, match="not both"):
        load_settings(stow_bearer_token="t", stow_basic_auth="u:p")


class _Guarded(http.server.BaseHTTPRequestHandler):
    """A STOW-RS service that wants a bearer token and stores nothing."""

    received: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.headers.get("Authorization") == "Bearer s3cret"
        type(self).received.append({"path": self.path, "ok": ok, "body": body, **self.headers})
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def guarded() -> Iterator[StowDestination]:
    _Guarded.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield StowDestination(f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
    server.shutdown()
    server.server_close()


def test_the_token_is_sent_and_a_refusal_is_a_failure(guarded, tmp_path: Path) -> None:
    path = factories.write(factories.radiograph(), tmp_path / "x.dcm")
    (refused,) = stow_files([path], guarded).results
    assert not refused.ok and "HTTP 401" in (refused.error or "")
    (stored,) = stow_files([path], guarded, StowOptions(bearer_token="s3cret")).results
    assert stored.ok and stored.status == 0
    request = _Guarded.received[-1]
    assert request["path"] == "/dicom-web/studies"
    assert request["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert path.read_bytes() in request["body"]


def test_nothing_listening_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    from tests.services import free_port

    path = factories.write(factories.radiograph(), tmp_path / "x.dcm")
    dest = StowDestination(f"http://127.0.0.1:{free_port()}/dicom-web")
    (result,) = stow_files([path], dest).results
    assert not result.ok and "ConnectionRefusedError" in (result.error or "")


@pytest.mark.slow
def test_results_reach_orthanc_by_stow_after_it_comes_back(
    start_node, redis_server, tmp_path: Path
) -> None:
    """Orthanc (DICOMweb plugin) is down at first: the retries deliver by STOW-RS once it is up."""
    orthanc = Orthanc(tmp_path / "orthanc", 11112, dicomweb=True)
    stow = f"stow+http://127.0.0.1:{orthanc.http_port}/dicom-web"
    node = start_node(
        broker_url=redis_server.url, destinations=[stow], delivery_retries=4, delivery_backoff=1.0
    )
    ds = factories.radiograph(rows=600, columns=500)
    with pipeline_worker(node.settings):
        assert send(node, [ds]).results[0].ok
        wait_for(lambda: any(d.outcome == "retry" for d in rows(node.engine, Delivery)), 120)
        orthanc.start()
        try:
            (study,) = wait_for(
                lambda: [
                    s
                    for s in rows(
                        node.engine, Study, Study.study_instance_uid == ds.StudyInstanceUID
                    )
                    if s.state == DONE
                ],
                timeout=90,
            )
            stored = orthanc.get("/instances")
            files = [orthanc.get_bytes(f"/instances/{i}/file") for i in stored]
        finally:
            orthanc.stop()
    attempts = rows(node.engine, Delivery)
    assert {d.destination for d in attempts} == {stow}
    assert any(d.outcome == "retry" for d in attempts)
    delivered = {d.object_id for d in attempts if d.outcome == "delivered"}
    assert len(delivered) == 2  # the SC and the SR
    modalities = sorted(pydicom.dcmread(io.BytesIO(f)).Modality for f in files)
    assert modalities == ["OT", "SR"] and study.state == DONE


def test_https_with_our_ca_and_the_settings_credentials(tmp_path: Path) -> None:
    """stow+https: verified against CXR_SEND_TLS_CA; the token comes from the settings."""
    import ssl

    from tests.certs import make_pki

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    _Guarded.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Guarded)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = StowDestination(f"https://127.0.0.1:{server.server_address[1]}/dicom-web")
        path = factories.write(factories.radiograph(), tmp_path / "x.dcm")
        settings = load_settings(
            destinations=[str(dest)], send_tls_ca=pki.ca, stow_bearer_token="s3cret"
        )
        (stored,) = stow_files([path], dest, settings.stow_options()).results
        assert stored.ok, stored
        # Trusting the system's CAs is asked for by name, and they do not vouch for the PACS.
        system = load_settings(stow_bearer_token="s3cret", send_tls_system_ca=True).stow_options()
        (refused,) = stow_files([path], dest, system).results
        assert not refused.ok and "SSL" in (refused.error or ""), refused
        # Nobody trusted: refused before connecting, and such settings do not load at all.
        (unsure,) = stow_files([path], dest, Settings().stow_options()).results
        assert "https needs CXR_SEND_TLS_CA" in (unsure.error or ""), unsure
        with pytest.raises(ValueError, match="needs CXR_SEND_TLS_CA"):
            load_settings(destinations=[str(dest)])
    finally:
        server.shutdown()
        server.server_close()


class _Flood(http.server.BaseHTTPRequestHandler):
    """A STOW-RS service that stores the instance and answers with far too much."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        chunk = b" " * 2**20
        try:
            for _ in range(64):  # bounded: 64 MiB at most, the client hangs up long before
                self.wfile.write(chunk)
        except OSError:
            pass


def test_an_oversized_answer_is_a_failed_attempt_not_read(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flood)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = StowDestination(f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
        path = factories.write(factories.radiograph(), tmp_path / "x.dcm")
        (result,) = stow_files([path], dest, StowOptions(timeout=10)).results
        assert not result.ok
        assert "answer longer than 4 MiB, not read" in (result.error or ""), result
    finally:
        server.shutdown()
        server.server_close()
