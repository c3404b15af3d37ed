"""Structured logs: JSON lines with a study correlation id, and no patient names."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

from tests import factories
from tests.helpers import cli_env
from tests.services import free_port, wait_port
from worker.logs import JsonFormatter, StudyFilter, study_context


def test_study_context_tags_records() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(StudyFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with study_context("1.2.3"):
            log.info("inside")
        log.info("outside")
        log.info("explicit", extra={"study": "4.5.6"})
    finally:
        log.removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message"], r["study"]) for r in records] == [
        ("inside", "1.2.3"),
        ("outside", None),
        ("explicit", "4.5.6"),
    ]
    assert {"time", "level", "logger", "process"} <= set(records[0])


def test_listener_json_logs_carry_the_study_and_no_patient_name(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(
        tmp_path / "data",
        CXR_PORT=str(port),
        CXR_LOG_FORMAT="json",
        CXR_QUIET_SECONDS="0.3",
        CXR_MONITOR_INTERVAL="0.1",
    )
    cli = [sys.executable, "-m", "worker.cli.main"]
    log = tmp_path / "listen.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*cli, "listen"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_port(port, timeout=30, process=proc, log=log)
            ds = factories.radiograph(PatientName="DOE^JANE")
            path = factories.write(ds, tmp_path / "x.dcm")
            sent = subprocess.run(
                [*cli, "send", str(path), "--quiet", "--to", f"CXR_TRIAGE@127.0.0.1:{port}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            import time

            deadline = time.monotonic() + 20
            while "queued study" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    stored = [r for r in records if r["message"].startswith("stored ")]
    queued = [r for r in records if r["message"].startswith("queued study")]
    assert stored and stored[0]["study"] == ds.StudyInstanceUID
    assert queued and queued[0]["study"] == ds.StudyInstanceUID
    assert "DOE" not in text and "JANE" not in text
