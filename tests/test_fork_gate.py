"""A fork of the worker's main process never lands in the middle of a /readyz answer."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.services import free_port
from worker.db.engine import make_session_factory, open_database
from worker.fork_gate import ForkGate
from worker.observability import start_observability


def _fork_and_report(done: Callable[[], bool]) -> int:
    """Fork; the child exits 0 if ``done()`` holds in it. Returns the child's exit status."""
    pid = os.fork()
    if pid == 0:
        os._exit(0 if done() else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_fork_waits_for_work_inside_the_gate() -> None:
    gate = ForkGate()
    inside = threading.Event()
    state = {"done": False}

    def work() -> None:
        with gate:
            inside.set()
            time.sleep(0.3)
            state["done"] = True

    thread = threading.Thread(target=work)
    thread.start()
    assert inside.wait(10)
    assert _fork_and_report(lambda: state["done"]) == 0
    thread.join(10)
    # The gate is free again in the parent after the fork: it can be taken at once.
    with gate:
        pass


def test_a_fork_during_a_readiness_check_waits_for_it(make_settings: Callable[..., Any]) -> None:
    port = free_port()
    settings = make_settings(worker_metrics_port=port)
    inside = threading.Event()
    state = {"done": False}

    def slow_check() -> dict[str, str]:
        # Stands for the broker check, which takes kombu's class-wide property locks.
        inside.set()
        time.sleep(0.3)
        state["done"] = True
        return {"model": "ok"}

    server = start_observability(
        make_session_factory(open_database(settings)),
        settings,
        port,
        slow_check,
        fork_gate=ForkGate(),
    )
    assert server is not None
    answers: list[int] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=30) as r:
                answers.append(r.status)
        except urllib.error.HTTPError as exc:  # 503 (no broker here) is an answer too
            answers.append(exc.code)

    client = threading.Thread(target=ask)
    client.start()
    try:
        assert inside.wait(30)
        # Without the gate the child is forked mid-check: done is still False there.
        assert _fork_and_report(lambda: state["done"]) == 0
        client.join(30)
        assert answers and answers[0] in (200, 503)
    finally:
        server.stop()
