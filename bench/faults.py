"""The fault table of docs/reliability.md: every fault scenario on real processes, once.

Run from the repository root (about 4 minutes on 2 cores; needs PostgreSQL on 127.0.0.1:5432,
redis-server, dcmtk, unshare and ../shared/data/dicom):

    .venv/bin/python -m bench.faults [--only pacs_down ...] [--json faults.json]

Each scenario (``tests/faults.py``) starts ``cxr-triage listen`` and ``cxr-triage work`` as
processes on a fresh PostgreSQL database with a private Redis and dcmtk's storescp as the PACS,
injects its fault, waits (bounded) for every study to settle and prints one table row: the
instances the node acknowledged, how many reached the PACS in a result, how many are held in
dead_letter/failed, lost, duplicated under new UIDs, re-sent with the same UIDs, and seconds.
Exit status 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from tests.faults import SCENARIOS, TABLE_HEADER, Tally
from tests.services import SHARED_DICOM, postgres_database


def _run(name: str) -> Tally:
    from worker.db.engine import make_engine
    from worker.db.migrate import upgrade

    with postgres_database() as url, tempfile.TemporaryDirectory(prefix=f"cxr-{name}-") as tmp:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return SCENARIOS[name](Path(tmp), url, SHARED_DICOM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="these scenarios")
    parser.add_argument("--json", type=Path, help="also write the tallies here")
    args = parser.parse_args(argv)
    if not SHARED_DICOM.is_dir():
        print(f"{SHARED_DICOM} is absent: the scenarios need real radiographs", file=sys.stderr)
        return 2
    tallies = []
    print(TABLE_HEADER, flush=True)
    for name in args.only or list(SCENARIOS):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        tally = _run(name)
        tallies.append(tally)
        print(tally.row(), flush=True)
        if tally.unaccounted:
            print(f"  audit reconcile: {tally.unaccounted}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(t) for t in tallies], indent=2))
    return int(any(t.lost or t.duplicated or t.unaccounted for t in tallies))


if __name__ == "__main__":
    sys.exit(main())
