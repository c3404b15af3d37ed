"""``cxr-triage listen``: run the DICOM node (C-STORE/C-ECHO SCP)."""

from __future__ import annotations

import argparse
import logging
import sys

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
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.node_service import serve

    updates = {
        k: v
        for k, v in (("port", args.port), ("bind", args.bind), ("ae_title", args.ae_title))
        if v is not None
    }
    settings = settings.model_copy(update=updates)
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
