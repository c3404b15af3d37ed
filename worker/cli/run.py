"""``cxr-triage run``: the node and a worker together, on the embedded default."""

from __future__ import annotations

import argparse
import logging

from worker.cli.processes import ProcessGroup, child_env, cli_command
from worker.settings import Settings

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the DICOM node and a worker together (the embedded default needs no server)",
        description=(
            "Start `cxr-triage listen` and `cxr-triage work` as two processes sharing the same "
            "settings (SQLite and the embedded broker unless configured), and stop both on "
            "SIGINT/SIGTERM or when either exits. The listener process never loads TensorFlow."
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.db.engine import open_database

    open_database(settings).dispose()  # migrate once, before both processes start
    cmd = cli_command(args.config)
    group = ProcessGroup([[*cmd, "listen"], [*cmd, "work"]], child_env())
    logger.info(
        "node on %s:%d as %s, worker on queue %s; Ctrl-C stops both",
        settings.bind,
        settings.port,
        settings.ae_title,
        settings.inference_queue,
    )
    return group.wait()
