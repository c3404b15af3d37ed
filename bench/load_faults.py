"""Load with faults, at the product's default settings: nothing lost, nothing sent twice.

16 modalities send at once, 50 instances each (10 studies of 5 images), to ``cxr-triage listen``
and ``cxr-triage work`` on PostgreSQL with a private Redis and dcmtk's storescp as the PACS.
When a third of the studies are done the worker is SIGKILLed and a new one started; at two
thirds Redis is restarted empty (the tasks of the rest of the backlog are gone). Then every
study must settle (bounded) and the tally must show every acknowledged instance delivered in an
SR, none duplicated under new UIDs; it also counts the sweeper's re-dispatches.

Run from the repository root (needs PostgreSQL on 127.0.0.1:5432, redis-server, dcmtk and
../shared/data/dicom; several minutes on 2 cores):

    .venv/bin/python -m bench.load_faults [--senders 16] [--studies 10] [--images 5]

Exit status 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.faults import (
    SETTLED,
    SOURCE_IMAGE,
    TABLE_HEADER,
    Deployment,
    Modality,
    make_study,
)
from tests.services import SHARED_DICOM, postgres_database
from worker.db.models import StudyState

# The fault harness shortens these for its small scenarios; this run keeps the product's.
_HARNESS_ONLY = (
    "CXR_QUIET_SECONDS",
    "CXR_MONITOR_INTERVAL",
    "CXR_DELIVERY_RETRIES",
    "CXR_DELIVERY_BACKOFF",
)


def _redispatches(dep: Deployment) -> dict[str, int]:
    """How often the sweeper sent work again, by what it found (study events)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from worker.db.models import StudyEvent

    with Session(dep.engine) as s:
        details = s.scalars(
            select(StudyEvent.detail).where(StudyEvent.detail.like("re-dispatched%"))
        ).all()
    counts: dict[str, int] = {}
    for detail in details:
        kind = (
            "queued, workers idle"
            if "idle" in detail
            else ("lease ran out" if "lease" in detail else "deliveries")
        )
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--studies", type=int, default=10, help="studies per sender")
    parser.add_argument("--images", type=int, default=5, help="images per study")
    parser.add_argument("--settle", type=float, default=1200.0, help="seconds at most")
    args = parser.parse_args(argv)
    if not (SHARED_DICOM / SOURCE_IMAGE).is_file():
        print(f"{SHARED_DICOM} is absent: the run needs a real radiograph", file=sys.stderr)
        return 2
    from worker.db.engine import make_engine
    from worker.db.migrate import upgrade

    total = args.senders * args.studies * args.images
    with postgres_database() as url, tempfile.TemporaryDirectory(prefix="cxr-load-") as tmp:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        with Deployment(Path(tmp), url) as dep:
            for key in _HARNESS_ONLY:
                dep.env.pop(key, None)
            dep.start()
            modality = Modality(dep.port)  # one record of what was acknowledged, for all
            lock = threading.Lock()
            uids: set[str] = set()

            def sender(n: int) -> None:
                for k in range(args.studies):
                    study = make_study(SHARED_DICOM / SOURCE_IMAGE, args.images, f"load-{n}-{k}")
                    with lock:
                        uids.add(study[0].StudyInstanceUID)
                    for attempt in range(5):  # a modality sends again what was not answered
                        statuses = modality.send(study)
                        study = [ds for ds, st in zip(study, statuses, strict=True) if st != 0]
                        if not study:
                            break
                        time.sleep(2 * (attempt + 1))

            started = time.monotonic()
            threads = [threading.Thread(target=sender, args=(n,)) for n in range(args.senders)]
            for t in threads:
                t.start()
            killed = emptied = False
            studies = args.senders * args.studies
            deadline = started + args.settle
            # The faults strike while the worker works through the backlog: a third of the
            # studies done, then two thirds.
            while not emptied and time.monotonic() < deadline:
                states = dep.states().values()
                done = sum(st in SETTLED for st in states)
                queued = sum(st == StudyState.QUEUED for st in states)
                at = time.monotonic() - started
                if not killed and done >= studies / 3:
                    print(f"{at:.0f} s: SIGKILL the worker ({done} done, {queued} queued)")
                    dep.kill_worker()
                    dep.start_worker()
                    killed = True
                elif killed and done >= 2 * studies / 3:
                    print(f"{at:.0f} s: Redis restarted empty ({done} done, {queued} queued)")
                    dep.redis.stop()
                    dep.redis.start()
                    emptied = True
                time.sleep(0.5)
            sending = time.monotonic() - started
            settled = dep.settle(uids, args.settle)
            tally = dep.tally(
                f"{args.senders} senders x {args.senders and total // args.senders} instances, "
                "worker SIGKILLed, Redis emptied",
                modality,
            )
            tally.recovery = (dep.settled_at or time.monotonic()) - started
            redispatched = _redispatches(dep)
    print(f"sent {total} instances; faults done at {sending:.0f} s; settled: {settled}")
    print(f"sweeper re-dispatches: {redispatched}")
    print(TABLE_HEADER)
    print(tally.row())
    if tally.unaccounted:
        print(f"audit reconcile: {tally.unaccounted[:5]}", file=sys.stderr)
    return int(bool(tally.lost or tally.duplicated or tally.unaccounted or not settled))


if __name__ == "__main__":
    sys.exit(main())
