"""``cxr-triage listen``: run the DICOM node (C-STORE/C-ECHO SCP)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from worker.db.migrate import SchemaOutOfDateError
from worker.settings import Settings

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "listen",
        help="run the DICOM node: receive, filter, spool and queue studies",
        description=(
            "Accept C-STORE and C-ECHO, keep PA chest radiographs in the spool, record every "
            "instance and queue complete studies. Runs until SIGINT or SIGTERM."
        ),
    )
    p.add_argument("--port", type=int, help="override CXR_PORT")
    p.add_argument("--bind", help="override CXR_BIND")
    p.add_argument("--ae-title", help="override CXR_AE_TITLE")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help=(
            "run N listener processes sharing the port (SO_REUSEPORT): the kernel spreads "
            "associations across them, so receiving scales past one Python process"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    updates = {
        k: v
        for k, v in (("port", args.port), ("bind", args.bind), ("ae_title", args.ae_title))
        if v is not None
    }
    settings = settings.model_copy(update=updates)
    if args.processes > 1:
        return _supervise(args, settings)
    from worker.node_service import serve

    try:
        serve(settings)
    except SchemaOutOfDateError as exc:
        print(f"cxr-triage listen: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"cxr-triage listen: cannot listen on {settings.bind}:{settings.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def _supervise(args: argparse.Namespace, settings: Settings) -> int:
    """Start N single-process listeners on one port; stop them all when one stops or on signal."""
    if settings.port == 0:
        print("cxr-triage listen: --processes needs a fixed port", file=sys.stderr)
        return 2
    from worker.node_service import open_database

    # Migrate once here rather than racing N children to do it.
    try:
        open_database(settings).dispose()
    except SchemaOutOfDateError as exc:
        print(f"cxr-triage listen: {exc}", file=sys.stderr)
        return 2
    env = {
        **os.environ,
        "CXR_REUSE_PORT": "true",
        "CXR_PORT": str(settings.port),
        "CXR_BIND": settings.bind,
        "CXR_AE_TITLE": settings.ae_title,
    }
    cmd = [sys.executable, "-m", "worker.cli.main"]
    if args.config:
        cmd += ["--config", str(args.config)]
    children = [subprocess.Popen([*cmd, "listen"], env=env) for _ in range(args.processes)]
    logger.info(
        "started %d listener processes on port %d: %s",
        len(children),
        settings.port,
        " ".join(str(c.pid) for c in children),
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    code = 0
    while not stopping:
        exited = [c for c in children if c.poll() is not None]
        if exited:
            code = exited[0].returncode or 1
            logger.error(
                "listener process %d exited with %s; stopping the others",
                exited[0].pid,
                exited[0].returncode,
            )
            break
        time.sleep(0.2)
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    for c in children:
        try:
            c.wait(30)
        except subprocess.TimeoutExpired:
            c.kill()
    return code
