"""``cxr-triage echo``: C-ECHO a peer."""

from __future__ import annotations

import argparse
import sys
import time

from dicom_node.sender import AssociationFailed, echo
from worker.cli import CLIENT_AE_TITLE, destination
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "echo",
        help="check a DICOM peer with C-ECHO",
        description="Send a C-ECHO to AET@HOST:PORT and print the status and round-trip time.",
    )
    p.add_argument("peer", type=destination, metavar="AET@HOST:PORT")
    p.add_argument(
        "--aet",
        "--calling-ae",
        dest="aet",
        default=CLIENT_AE_TITLE,
        help=f"the AE title to call as (default {CLIENT_AE_TITLE}; the node's own, CXR_AE_TITLE, "
        "is for the node: a peer that allows only its modalities refuses a tool calling as it)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    options = settings.sender_options(
        calling_ae=args.aet,
        acse_timeout=args.timeout,
        dimse_timeout=args.timeout,
        network_timeout=args.timeout,
        connection_timeout=args.timeout,
    )
    start = time.perf_counter()
    try:
        status = echo(args.peer, options)
    except AssociationFailed as exc:
        print(f"echo {args.peer}: FAILED: {exc}", file=sys.stderr)
        return 1
    ms = (time.perf_counter() - start) * 1000
    print(f"echo {args.peer}: status 0x{status:04X} in {ms:.1f} ms")
    return 0 if status == 0 else 1
