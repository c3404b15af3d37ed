"""Warm workers: the model is loaded and run once before a worker takes tasks; readiness says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli_env, wait_for
from tests.services import free_port
from worker.warm import WarmMarks

CLI = [sys.executable, "-m", "worker.cli.main"]


def test_marks_count_live_warm_children_and_name_a_failure(make_settings) -> None:
    settings = make_settings()
    marks = WarmMarks(settings, os.getpid())
    marks.reset()
    assert marks.check(2) == "0 of 2 worker processes warm (loading the model)"
    marks.mark(os.getpid(), 1.5)
    dead = subprocess.Popen(["true"])
    dead.wait()
    marks.mark(dead.pid, 1.0)  # a child that has died since does not count
    assert marks.check(2) == "1 of 2 worker processes warm (loading the model)"
    assert marks.check(1) == "ok"
    marks.failed(os.getpid(), "ModelCardError: weights changed")
    assert marks.check(1) == (
        f"model failed in worker process {os.getpid()}: ModelCardError: weights changed"
    )


def _readyz(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError:
        return None  # not listening yet


@pytest.mark.slow
def test_worker_is_not_ready_until_every_process_is_warm(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(tmp_path / "data", CXR_WORKER_METRICS_PORT=str(port))
    log = (tmp_path / "work.log").open("w")
    # A session of its own, so that a hung pool process is killed with the rest; the waits
    # stay within pytest's timeout so that a hang fails with the log, not a stack dump.
    proc = subprocess.Popen(
        [*CLI, "work", "--concurrency", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: list[tuple[int, dict[str, Any]]] = []
    try:

        def answered() -> bool:
            got = _readyz(port)
            if got is not None:
                seen.append(got)
            return got is not None and got[0] == 200

        try:
            wait_for(answered, timeout=200, interval=0.2)
        except TimeoutError:
            last = seen[-1] if seen else "no answer"
            tail = (tmp_path / "work.log").read_text()[-3000:]
            raise AssertionError(f"never ready; last /readyz: {last}\n{tail}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    assert proc.returncode == 0  # a stop on SIGTERM is a clean one (exit status from Celery)
    first_code, first = seen[0]
    assert first_code == 503 and first["checks"]["model"].endswith("(loading the model)")
    assert first["checks"]["database"] == "ok"
    assert seen[-1][1]["checks"]["model"] == "ok"
    text = (tmp_path / "work.log").read_text()
    assert text.count("warm in") == 2, text[-3000:]
