"""``cxr-triage send``: C-STORE files and folders to a peer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from dicom_node.sender import SendResult, iter_dicom_files, send_files
from worker.cli import CLIENT_AE_TITLE, destination
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "send",
        help="send DICOM files or folders to a peer by C-STORE",
        description=(
            "Send DICOM Part 10 files (folders are searched recursively) to AET@HOST:PORT, each "
            "in its own transfer syntax, and print a summary of the statuses. Exits 1 if any "
            "file was not stored."
        ),
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--to", required=True, type=destination, metavar="AET@HOST:PORT")
    p.add_argument(
        "--aet",
        "--calling-ae",
        dest="aet",
        default=CLIENT_AE_TITLE,
        help=f"the AE title to call as (default {CLIENT_AE_TITLE}; the node's own, CXR_AE_TITLE, "
        "is for the node: a peer that allows only its modalities refuses a tool calling as it)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="DIMSE timeout, seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"cxr-triage send: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    files = list(iter_dicom_files(args.paths))
    if not files:
        print("cxr-triage send: no files found", file=sys.stderr)
        return 2
    options = settings.sender_options(calling_ae=args.aet, dimse_timeout=args.timeout)
    bar = tqdm(total=len(files), unit="file", disable=args.quiet or None, file=sys.stderr)
    failures: list[SendResult] = []

    def progress(result: SendResult) -> None:
        bar.update(1)
        if not result.ok:
            failures.append(result)

    summary = send_files(files, args.to, options, on_result=progress)
    bar.close()
    for r in failures:
        print(f"  {r.label}  {r.source}: {r.error or 'refused'}", file=sys.stderr)
    counts = ", ".join(f"{label}: {n}" for label, n in summary.counts().items())
    print(f"sent {summary.sent} of {len(summary.results)} file(s) to {args.to} ({counts})")
    return 0 if summary.failed == 0 else 1
