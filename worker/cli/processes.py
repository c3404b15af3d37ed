"""Starting and stopping the node's and the worker's processes together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

logger = logging.getLogger(__name__)


_MODULE = "worker.cli.main"


def cli_command(config: Path | None = None) -> list[str]:
    cmd = [sys.executable, "-m", _MODULE]
    return [*cmd, "--config", str(config)] if config else cmd


class ProcessGroup:
    """Child processes that live and die together (bounded waits everywhere)."""

    def __init__(
        self,
        commands: Sequence[list[str]],
        env: dict[str, str],
        log: Path | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self._log = open(log, "ab") if log else None  # noqa: SIM115 - closed in stop()
        out = self._log if self._log else None
        self.children = [
            subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                pass_fds=tuple(pass_fds),
            )
            for cmd in commands
        ]

    def first_exited(self) -> subprocess.Popen[bytes] | None:
        return next((c for c in self.children if c.poll() is not None), None)

    def describe(self, child: subprocess.Popen[bytes]) -> str:
        """``cxr-triage work (pid 123)``: what a child runs, for messages."""
        cmd = [str(arg) for arg in cast(list[str], child.args)]
        if _MODULE in cmd:
            cmd = ["cxr-triage", *cmd[cmd.index(_MODULE) + 1 :]]
        return f"{' '.join(cmd)} (pid {child.pid})"

    def stop(self, timeout: float = 30.0) -> None:
        for c in self.children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in self.children:
            try:
                c.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait(5)
        if self._log:
            self._log.close()

    def wait(self, tick: Callable[[], None] | None = None) -> int:
        """Block until SIGINT/SIGTERM or until one child exits; then stop all. Returns a code.

        ``tick`` is called about five times a second meanwhile (e.g. to report readiness).
        """
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        code = 0
        while not stopping:
            exited = self.first_exited()
            if exited is not None:
                code = exited.returncode or 1
                logger.error(
                    "%s exited with %s; stopping the others",
                    self.describe(exited),
                    exited.returncode,
                )
                break
            if tick is not None:
                tick()
            time.sleep(0.2)
        self.stop()
        return code


def child_env(**values: str) -> dict[str, str]:
    return {**os.environ, **values}
