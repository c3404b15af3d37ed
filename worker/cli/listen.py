"""``cxr-triage listen``: run the DICOM node (C-STORE/C-ECHO SCP)."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

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
            "run N listener processes sharing one listening socket: each new association "
            "goes to the least busy, so receiving scales past one Python process"
        ),
    )
    # Set by the parent of `--processes N` for its children: the socket they share, and for
    # all but the first, that the first runs the study monitor for the group.
    p.add_argument(
        "--hang-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --processes: a listener process whose accept loop has not run for this "
        "long is killed and replaced (default 30); one that dies is restarted",
    )
    p.add_argument("--shared-socket", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-monitor", action="store_true", help=argparse.SUPPRESS)
    # Set by a supervising parent: a file the accept loop renews, so that a hang shows.
    p.add_argument("--heartbeat-file", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    updates = {
        k: v
        for k, v in (("port", args.port), ("bind", args.bind), ("ae_title", args.ae_title))
        if v is not None
    }
    settings = settings.replace(**updates)
    if args.processes > 1:
        return _supervise(args, settings)
    from worker.node_service import serve

    try:
        serve(
            settings,
            args.shared_socket,
            monitor=not args.no_monitor,
            heartbeat_file=args.heartbeat_file,
        )
    except SchemaOutOfDateError as exc:
        print(f"cxr-triage listen: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"cxr-triage listen: cannot listen on {settings.node.bind}:{settings.node.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


def _supervise(args: argparse.Namespace, settings: Settings) -> int:
    """Start N single-process listeners on one socket; stop them all when one stops or on signal.

    The socket is opened here and inherited, rather than each child binding its own with
    SO_REUSEPORT: the kernel's hash then decides which process takes an association, often
    two for one process and none for another; on one shared socket the least busy takes it.
    """
    import socket

    from worker.cli.processes import ProcessGroup, child_env, cli_command
    from worker.db.engine import open_database

    if settings.node.port == 0:
        print("cxr-triage listen: --processes needs a fixed port", file=sys.stderr)
        return 2
    # Migrate once here rather than racing N children to do it.
    try:
        open_database(settings).dispose()
    except SchemaOutOfDateError as exc:
        print(f"cxr-triage listen: {exc}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in settings.node.bind else socket.AF_INET
    try:
        sock = socket.create_server(
            (settings.node.bind, settings.node.port),
            family=family,
            backlog=settings.node.max_connections,
        )
    except OSError as exc:
        print(
            f"cxr-triage listen: cannot listen on {settings.node.bind}:{settings.node.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    env = child_env(
        CXR_PORT=str(settings.node.port),
        CXR_BIND=settings.node.bind,
        CXR_AE_TITLE=settings.node.ae_title,
    )
    command = [*cli_command(args.config), "listen", "--shared-socket", str(sock.fileno())]
    # One study monitor for the group: it works on the shared database, and N of them
    # polled it N times a second (bench/database_cpu.py: a pass a second apart costs ~10 ms).
    commands = [command] + [[*command, "--no-monitor"]] * (args.processes - 1)
    # The socket stays open here for the group's life: a restarted child inherits it again.
    with sock, tempfile.TemporaryDirectory(prefix="cxr-listen-") as beats:
        heartbeats = [Path(beats) / f"listener-{i}" for i in range(args.processes)]
        commands = [
            [*cmd, "--heartbeat-file", str(path)]
            for cmd, path in zip(commands, heartbeats, strict=True)
        ]
        group = ProcessGroup(
            commands,
            env,
            pass_fds=(sock.fileno(),),
            supervise=True,
            heartbeats=heartbeats,
            hang_after=args.hang_after,
        )
        logger.info("started %d listener processes on port %d", args.processes, settings.node.port)
        return group.wait()
