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


#: Exit status of a child whose configuration is wrong: restarting cannot help.
_CONFIG_ERROR = 2
#: Waits before restarting a child that died: doubling from 1 s, at most a minute.
_FIRST_BACKOFF, _MAX_BACKOFF = 1.0, 60.0
#: A child that ran this long before it died starts again from the first wait.
_STABLE_AFTER = 60.0
#: A child that died this many times in a row, each within _STABLE_AFTER of its start, is in
#: a crash loop (a busy port, a broken install): the group stops and says so.
_CRASH_LOOP = 5


class ProcessGroup:
    """Child processes started together and stopped together (bounded waits everywhere).

    Without ``supervise`` the group stops when one child exits. With it, a child that dies is
    started again (after 1, 2, 4 ... 60 s) while the others carry on with their associations,
    and a child whose heartbeat file (renewed by its accept loop) is older than ``hang_after``
    seconds is killed and replaced. A child that exits with status 2 (its configuration is
    wrong) stops the group: no restart can help it; so does one that keeps dying at start.
    """

    def __init__(
        self,
        commands: Sequence[list[str]],
        env: dict[str, str],
        log: Path | None = None,
        pass_fds: Sequence[int] = (),
        *,
        supervise: bool = False,
        heartbeats: Sequence[Path | None] = (),
        hang_after: float = 30.0,
    ) -> None:
        self._log = open(log, "ab") if log else None  # noqa: SIM115 - closed in stop()
        self.commands = [list(c) for c in commands]
        self.env = env
        self.pass_fds = tuple(pass_fds)
        self.supervise = supervise
        self.heartbeats = list(heartbeats) or [None] * len(self.commands)
        self.hang_after = hang_after
        self.restarts = 0
        self._started = [0.0] * len(self.commands)
        self._backoff = [_FIRST_BACKOFF] * len(self.commands)
        self._quick_deaths = [0] * len(self.commands)
        self._restart_at: dict[int, float] = {}
        self.children = [self._start(i) for i in range(len(self.commands))]

    def _start(self, i: int) -> subprocess.Popen[bytes]:
        out = self._log if self._log else None
        heartbeat = self.heartbeats[i]
        if heartbeat is not None:
            heartbeat.touch()  # the child has hang_after seconds to start renewing it
        self._started[i] = time.monotonic()
        return subprocess.Popen(
            self.commands[i],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            pass_fds=self.pass_fds,
        )

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

    def _kill_hung(self, now: float) -> None:
        for i, child in enumerate(self.children):
            path = self.heartbeats[i]
            if path is None or child.poll() is not None or i in self._restart_at:
                continue
            if now - self._started[i] < self.hang_after:
                continue
            try:
                silent = time.time() - path.stat().st_mtime
            except OSError:
                silent = self.hang_after + 1  # the file is gone: treat as silent
            if silent > self.hang_after:
                logger.error(
                    "%s has not answered for %.0f s; killing it", self.describe(child), silent
                )
                child.kill()
                child.wait(10)

    def _supervise(self, now: float) -> int | None:
        """Restart children that died; None, or the exit code that stops the group."""
        self._kill_hung(now)
        for i, child in enumerate(self.children):
            if i in self._restart_at:
                if now >= self._restart_at[i]:
                    del self._restart_at[i]
                    self.children[i] = self._start(i)
                    self.restarts += 1
                    logger.warning("restarted %s", self.describe(self.children[i]))
                continue
            code = child.poll()
            if code is None:
                continue
            if code == _CONFIG_ERROR:
                logger.error(
                    "%s exited with %s (configuration); stopping the others",
                    self.describe(child),
                    code,
                )
                return code
            if now - self._started[i] >= _STABLE_AFTER:
                self._backoff[i] = _FIRST_BACKOFF
                self._quick_deaths[i] = 0
            self._quick_deaths[i] += 1
            if self._quick_deaths[i] >= _CRASH_LOOP:
                logger.error(
                    "%s exited with %s, %d times in a row soon after starting; stopping the others",
                    self.describe(child),
                    code,
                    _CRASH_LOOP,
                )
                return code or 1
            wait = self._backoff[i]
            self._backoff[i] = min(_MAX_BACKOFF, wait * 2)
            self._restart_at[i] = now + wait
            logger.error(
                "%s exited with %s; restarting it in %.0f s (the others carry on)",
                self.describe(child),
                code,
                wait,
            )
        return None

    def wait(self, tick: Callable[[], None] | None = None) -> int:
        """Block until SIGINT/SIGTERM (or, unsupervised, until one child exits); stop all.

        ``tick`` is called about five times a second meanwhile (e.g. to report readiness).
        Returns an exit code: 0 after a signal, else the child's.
        """
        stopping = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        code = 0
        while not stopping:
            if self.supervise:
                stop_code = self._supervise(time.monotonic())
                if stop_code is not None:
                    code = stop_code
                    break
            else:
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
