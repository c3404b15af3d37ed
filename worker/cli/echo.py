"""``cxr-triage echo``: C-ECHO a peer."""

from __future__ import annotations

import argparse
import sys
import time

from dicom_node.sender import AssociationFailed, echo
from worker.cli import destination
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "echo",
        help="check a DICOM peer with C-ECHO",
        description="Send a C-ECHO to AET@HOST:PORT and print the status and round-trip time.",
    )
    p.add_argument("peer", type=destination, metavar="AET@HOST:PORT")
    p.add_argument("--calling-ae", help="our AE title (default: CXR_AE_TITLE)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    options = settings.sender_options(
        calling_ae=args.calling_ae or settings.ae_title,
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
