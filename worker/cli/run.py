"""``cxr-triage run``: the node and a worker together, on the embedded default."""

from __future__ import annotations

import argparse
import logging
import socket
import tempfile
import time
from pathlib import Path

from worker.cli.processes import ProcessGroup, child_env, cli_command
from worker.settings import Settings
from worker.warm import WarmMarks

logger = logging.getLogger(__name__)

# How often `run` says what it still waits for.
_WAITING_EVERY = 10.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the DICOM node and a worker together (the embedded default needs no server)",
        description=(
            "Start `cxr-triage listen` and `cxr-triage work` as two processes sharing the same "
            "settings (SQLite and the embedded broker unless configured), and stop both on "
            "SIGINT/SIGTERM; either one that dies is restarted (after 1, 2, 4 ... 60 s), and a "
            "listener whose accept loop hangs for 30 s is replaced. The listener process never "
            "loads TensorFlow. "
            "Logs 'ready' once the node accepts connections and every worker process has "
            "loaded the model and run its warm-up."
        ),
    )
    p.set_defaults(func=run)


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class _Readiness:
    """Polls the node's port and the worker's warm marks until both are ready; logs once."""

    def __init__(self, settings: Settings, worker_pid: int) -> None:
        self.settings = settings
        self.marks = WarmMarks(settings, worker_pid)
        self.host = "127.0.0.1" if settings.node.bind in ("0.0.0.0", "") else settings.node.bind
        self.started = time.monotonic()
        self.next_report = self.started + _WAITING_EVERY
        self.next_check = self.started
        self.ready = False

    def waiting_for(self) -> list[str]:
        missing = []
        if not _accepting(self.host, self.settings.node.port):
            missing.append(f"the node on {self.host}:{self.settings.node.port}")
        worker = self.marks.check(self.settings.worker.worker_concurrency)
        if worker != "ok":
            missing.append(f"the worker ({worker})")
        return missing

    def __call__(self) -> None:
        now = time.monotonic()
        if self.ready or now < self.next_check:
            return
        # Every tick (5 a second): a connect and a file read, and 'ready' is then on time.
        self.next_check = now + 0.2
        missing = self.waiting_for()
        if not missing:
            self.ready = True
            logger.info("ready in %.1f s: node and worker (model warm)", now - self.started)
        elif now >= self.next_report:
            self.next_report = now + _WAITING_EVERY
            logger.info("not ready yet: waiting for %s", " and ".join(missing))


def run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.db.engine import open_database

    open_database(settings).dispose()  # migrate once, before both processes start
    cmd = cli_command(args.config)
    with tempfile.TemporaryDirectory(prefix="cxr-run-") as beats:
        heartbeat = Path(beats) / "listener"
        group = ProcessGroup(
            [[*cmd, "listen", "--heartbeat-file", str(heartbeat)], [*cmd, "work"]],
            child_env(),
            supervise=True,  # a child that dies is restarted; the other carries on
            heartbeats=[heartbeat, None],
        )
        return _serve(group, settings)


def _serve(group: ProcessGroup, settings: Settings) -> int:
    logger.info(
        "node on %s:%d as %s, worker on queue %s; Ctrl-C stops both",
        settings.node.bind,
        settings.node.port,
        settings.node.ae_title,
        settings.queue.inference_queue,
    )
    return group.wait(_Readiness(settings, group.children[1].pid))
