"""The long fuzz run: many seeded malformed inputs against a live node, with its figures.

Run from the repository root (about 4 minutes per 1,000 inputs on 2 cores):

    .venv/bin/python -m bench.fuzz --count 10000 --seed 1 --json fuzz-report.json

The node is ``cxr-triage listen`` in its own process on a free loopback port, on SQLite in a
temporary folder (or ``--database-url`` for PostgreSQL). Inputs are drawn from every kind in
``tests/fuzzing.py``; after each batch the node must be alive, answer C-ECHO within 5 s, have
nothing left in ``spool/incoming/``, stay under ``--rss-limit-mb``, and every ``0x0000`` must
match an ``instances`` row and the bytes sent. It prints inputs by kind, what the node answered,
crashes, wedges, files left, unmatched successes and peak RSS; ``docs/reliability.md`` quotes
them. Exit status 1 if any invariant failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.fuzzing import KINDS, Campaign, NodeProcess, Report
from tests.services import free_port


def _progress(total: int) -> Callable[[Report], None]:
    def show(r: Report) -> None:
        print(
            f"\r{r.sent:>6}/{total} inputs  {r.seconds:6.0f} s  crashes {r.crashes}  "
            f"wedges {r.wedges}  left {r.leftovers}  unmatched {len(r.unmatched_successes)}  "
            f"RSS {r.peak_rss / 2**20:.0f} MiB",
            end="",
            file=sys.stderr,
            flush=True,
        )

    return show


def _table(report: Report) -> str:
    lines = [
        f"seed {report.seed}: {report.sent} inputs in {report.seconds:.0f} s",
        "",
        "| kind | inputs |",
        "|---|---:|",
        *(f"| {k} | {n} |" for k, n in sorted(report.kinds.items())),
        "",
        "| node's answer | count |",
        "|---|---:|",
        *(f"| {k} | {n} |" for k, n in report.results.most_common()),
        "",
        f"crashes {report.crashes}, wedges {report.wedges}, files left in incoming/ "
        f"{report.leftovers}, 0x0000 without a matching row and file "
        f"{len(report.unmatched_successes)}, internal errors (0xC211) "
        f"{len(report.internal_errors)}, peak RSS {report.peak_rss / 2**20:.0f} MiB",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="inputs to send")
    parser.add_argument("--seed", type=int, default=1, help="the run is reproducible from it")
    parser.add_argument("--batch", type=int, default=50, help="inputs between checks")
    parser.add_argument("--rss-limit-mb", type=int, default=1536, help="RSS counted as a wedge")
    parser.add_argument("--database-url", help="run the node on this database (default SQLite)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument(
        "--kinds", help=f"comma-separated kinds to draw from (default all: {', '.join(KINDS)})"
    )
    parser.add_argument("--log", type=Path, help="keep the node's log here")
    args = parser.parse_args()
    if args.count < 1 or args.batch < 1:
        parser.error("--count and --batch must be positive")
    kinds = args.kinds.split(",") if args.kinds else None
    unknown = sorted(set(kinds or []) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds: {', '.join(unknown)}")

    with tempfile.TemporaryDirectory(prefix="cxr-fuzz-") as tmp:
        env = {"CXR_DATABASE_URL": args.database_url} if args.database_url else {}
        node = NodeProcess(Path(tmp) / "data", free_port(), **env)
        try:
            campaign = Campaign(
                node, seed=args.seed, rss_limit=args.rss_limit_mb * 2**20, kinds=kinds
            )
            report = campaign.run(args.count, batch=args.batch, progress=_progress(args.count))
        finally:
            node.stop()
            if args.log:
                shutil.copyfile(Path(tmp) / "node.log", args.log)
    print(file=sys.stderr)
    print(_table(report))
    if report.unmatched_successes:
        print("unmatched:", *report.unmatched_successes[:20], sep="\n  ")
    if report.internal_errors:
        print("internal errors:", *report.internal_errors[:20], sep="\n  ")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "seed": report.seed,
                    "sent": report.sent,
                    "seconds": round(report.seconds, 1),
                    "kinds": dict(report.kinds),
                    "results": dict(report.results),
                    "crashes": report.crashes,
                    "wedges": report.wedges,
                    "leftovers": report.leftovers,
                    "unmatched_successes": report.unmatched_successes,
                    "internal_errors": report.internal_errors,
                    "peak_rss_bytes": report.peak_rss,
                },
                indent=2,
            )
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
