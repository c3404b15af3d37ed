"""The test harness itself: a wait for a process that has died fails at once, and says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import free_port, wait_port


def test_waiting_for_a_dead_process_fails_at_once_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; print('cannot bind: boom'); sys.exit(3)"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        # RuntimeError, not the TimeoutError of a wait sat out to its end.
        with pytest.raises(RuntimeError, match=r"exited with 3:\n(.|\n)*cannot bind: boom"):
            wait_port(free_port(), timeout=60, process=proc, log=log)


def test_a_timeout_still_says_what_the_log_says(tmp_path: Path) -> None:
    log = tmp_path / "quiet.log"
    log.write_text("still loading the model\n")
    with pytest.raises(TimeoutError, match="still loading the model"):
        wait_port(free_port(), timeout=0.2, log=log)
