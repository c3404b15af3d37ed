"""The process group behind ``run``, ``demo`` and ``listen --processes``: it says who stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import cli_env, wait_for
from worker.cli.demo import _fail
from worker.cli.processes import ProcessGroup, cli_command


def test_a_child_that_exits_is_named_with_its_code_and_the_log_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "group.log"
    env = cli_env(tmp_path / "data")
    sleeper = ["sleep", "30"]
    group = ProcessGroup([sleeper, [*cli_command(), "no-such-command"]], env, log=log)
    try:
        exited = wait_for(group.first_exited, timeout=60)
        assert exited is group.children[1] and exited.returncode == 2
        assert group.describe(exited) == f"cxr-triage no-such-command (pid {exited.pid})"
        assert group.describe(group.children[0]) == f"sleep 30 (pid {group.children[0].pid})"
        _fail("a process stopped", group, log)
    finally:
        group.stop(timeout=10)
    assert group.children[0].returncode is not None  # the sleeper was stopped with it
    err = capsys.readouterr().err
    assert f"cxr-triage no-such-command (pid {exited.pid}) exited with 2" in err
    assert "invalid choice: 'no-such-command'" in err  # argparse's message, from the log
