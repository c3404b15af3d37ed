"""The audit API over real HTTP, and its page in headless Chromium."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.services import free_port, require, wait_port
from tests.test_audit import processed  # noqa: F401 - the fixture
from worker.db.engine import make_session_factory

TOKEN = "s3cret-token"


def _get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, bytes, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as rsp:
            return rsp.status, rsp.read(), rsp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""


@pytest.fixture
def api(processed) -> Iterator[tuple[int, Any]]:  # noqa: F811
    import uvicorn

    from worker.api import create_app

    node = processed[0]
    node.settings.api.api_token = TOKEN
    app = create_app(node.settings, make_session_factory(node.engine))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port(port)
    yield port, processed
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_api_requires_a_token_and_paginates(api) -> None:
    port, (_node, pa, ct, pending) = api
    assert _get(port, "/api/studies", token=None)[0] == 401
    assert _get(port, "/api/studies", token="wrong")[0] == 401
    status, body, _ = _get(port, "/api/studies?page_size=2")
    page1 = json.loads(body)
    assert status == 200 and len(page1["items"]) == 2 and page1["has_next"]
    page2 = json.loads(_get(port, "/api/studies?page_size=2&page=2")[1])
    assert len(page2["items"]) == 1 and not page2["has_next"]
    uids = {i["study_instance_uid"] for i in page1["items"] + page2["items"]}
    assert uids == {pa.StudyInstanceUID, ct.StudyInstanceUID, pending.StudyInstanceUID}
    done = json.loads(_get(port, "/api/studies?state=done")[1])["items"]
    assert [d["study_instance_uid"] for d in done] == [pa.StudyInstanceUID]
    story = json.loads(_get(port, f"/api/studies/{pa.StudyInstanceUID}")[1])
    assert any(e["what"] == "study result" for e in story["events"])
    assert _get(port, "/api/studies/1.2.3")[0] == 404
    status, png, kind = _get(port, f"/api/studies/{pa.StudyInstanceUID}/heatmaps/0.png")
    assert status == 200 and kind == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert _get(port, f"/api/studies/{pa.StudyInstanceUID}/heatmaps/5.png")[0] == 404
    recon = json.loads(_get(port, "/api/reconcile?since=2000-01-01T00:00:00&grace_minutes=0")[1])
    assert not recon["ok"] and recon["items"][0]["sop_instance_uid"] == pending.SOPInstanceUID
    schema = json.loads(_get(port, "/openapi.json", token=None)[1])
    assert {"/api/studies", "/api/studies/{study_uid}", "/api/reconcile"} <= set(schema["paths"])


@pytest.mark.slow  # over 5 s on 2 cores (pytest --durations)
def test_odd_tokens_are_401_and_query_strings_stay_out_of_the_log(api, caplog) -> None:
    port, _ = api
    for odd in ("t\u00f6k\u00e9n", "\u00ff" * 300, ""):
        assert _get(port, "/api/studies", token=odd)[0] == 401, odd
    with caplog.at_level(logging.INFO, logger="worker.api"):
        assert _get(port, "/api/studies?patient_id=PHI-SECRET-42")[0] == 200
        wait_for(lambda: "GET /api/studies 200" in caplog.text, timeout=5)
    assert "PHI-SECRET-42" not in caplog.text


def test_api_refuses_to_run_without_a_token(processed) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    from worker.api import create_app

    node = processed[0]
    node.settings.api.api_token = None
    with pytest.raises(ValueError, match="CXR_API_TOKEN"):
        create_app(node.settings, make_session_factory(node.engine))


def _chromium(url: str, profile: Path, *extra: str) -> str:
    """The page's DOM after its scripts ran, in headless Chromium in Tokyo's time zone (so a
    time shown in UTC by mistake would show)."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
        *extra,
    ]
    env = {**os.environ, "TZ": "Asia/Tokyo"}
    done = subprocess.run(
        ["chromium", *flags, url], capture_output=True, text=True, timeout=120, env=env
    )
    return done.stdout


@pytest.mark.slow
def test_page_in_headless_chromium(api, tmp_path: Path) -> None:
    require(shutil.which("chromium") is not None, "chromium is not installed")
    port, (_node, pa, _ct, pending) = api
    base = f"http://127.0.0.1:{port}/#token={TOKEN}"
    dom = _chromium(base, tmp_path / "p1", "--dump-dom")
    assert pa.StudyInstanceUID[-24:] in dom  # the table was filled by the API
    assert '<p id="status">studies 1–3</p>' in dom
    # Times in the reader's zone, named: Tokyo is UTC+9.
    assert "received (Asia/Tokyo)" in dom and "GMT+9" in dom
    # The newest study's timeline is opened: the one still queued, with its instance's decision.
    assert f"Study {pending.StudyInstanceUID} — queued" in dom
    assert "ELIGIBLE [view-position]" in dom

    # Filters and pages come from the address, so a view can be bookmarked.
    done = _chromium(base + "&state=done", tmp_path / "p2", "--dump-dom")
    assert '<p id="status">studies 1–1</p>' in done
    assert pa.StudyInstanceUID[-24:] in done and pending.StudyInstanceUID[-24:] not in done
    page2 = _chromium(base + "&size=2&page=2", tmp_path / "p3", "--dump-dom")
    assert '<p id="status">studies 3–3</p>' in page2 and "page 2" in page2
    old = _chromium(base + "&from=2000-01-01&to=2000-01-02", tmp_path / "p4", "--dump-dom")
    assert '<p id="status">no studies match</p>' in old
    covid = _chromium(base + "&label=covid", tmp_path / "p5", "--dump-dom")
    assert '<p id="status">no studies match</p>' in covid  # the fixture's study is normal

    shot = tmp_path / "page.png"
    _chromium(base, tmp_path / "p6", "--window-size=1200,900", f"--screenshot={shot}")
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (900, 1200) and img.std() > 10  # a rendered page, not a blank one


@pytest.fixture
def pg_api(pg_url: str, make_settings) -> Iterator[int]:
    """The API over an empty PostgreSQL database (NUL bytes are errors only there)."""
    import uvicorn

    from worker.api import create_app
    from worker.db.engine import make_engine
    from worker.db.migrate import ensure_schema

    settings = make_settings(database_url=pg_url, api_token=TOKEN)
    engine = make_engine(pg_url)
    ensure_schema(engine, auto_migrate=True)
    app = create_app(settings, make_session_factory(engine))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port(port)
    yield port
    server.should_exit = True
    thread.join(10)
    engine.dispose()


@pytest.mark.parametrize(
    "path",
    [
        "/api/studies?patient_id=%00",
        "/api/studies?calling_ae=A%00B",
        "/api/studies?page=100000000000000000",
        "/api/studies?page=10001",
        "/api/studies?accession_number=" + "9" * 65,
        "/api/reconcile?since=2000-01-01T00:00:00&grace_minutes=1e308",
        "/api/reconcile?since=2000-01-01T00:00:00&grace_minutes=-1e308",
        "/api/reconcile?since=2000-01-01T00:00:00&grace_minutes=nan",
        "/api/studies/1.2%003",
        "/api/studies/1.2.3/heatmaps/99999999999999999999.png",
    ],
)
def test_out_of_range_parameters_are_422_not_500(pg_api: int, path: str) -> None:
    status, body, _ = _get(pg_api, path)
    assert status == 422, body


def test_api_takes_the_same_times_as_the_command_line(pg_api: int) -> None:
    for since in ("1d", "30m", "2026-11-25", "2026-11-25T10:00"):
        status, body, _ = _get(pg_api, f"/api/reconcile?since={since}")
        assert status == 200, body
        assert _get(pg_api, f"/api/studies?since={since}")[0] == 200
    status, body, _ = _get(pg_api, "/api/reconcile?since=yesterday")
    assert status == 422 and b"30m, 12h, 7d" in body
