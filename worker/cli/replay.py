"""``cxr-triage replay``: send dead-lettered results again."""

from __future__ import annotations

import argparse
import sys

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="re-send results whose delivery gave up (dead letters)",
        description=(
            "Find every produced object whose last delivery attempt to a destination is 'dead' "
            "and C-STORE it again, now, with the same UIDs (the PACS replaces, not duplicates). "
            "Exits 1 if anything still fails."
        ),
    )
    p.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    p.add_argument("--list", action="store_true", help="only list what would be sent")
    p.add_argument(
        "--stuck",
        type=float,
        metavar="MINUTES",
        help="also send again the work of studies in queued, processing or delivering with no "
        "progress for MINUTES: queued ones, and those whose worker's lease ran out (a live "
        "worker's study is left to it, as the node's sweeper does)",
    )
    p.set_defaults(func=run)


def _stuck(args: argparse.Namespace, settings: Settings, sessions: object) -> int:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from worker.celery_app import create_celery
    from worker.db.models import DELIVERING, PROCESSING, QUEUED, Study
    from worker.db.sweeper import Sweeper
    from worker.queueing import DeliveryEnqueuer, StudyEnqueuer

    cutoff = datetime.now(UTC) - timedelta(minutes=args.stuck)
    with sessions() as s:  # type: ignore[operator]
        query = select(Study.study_instance_uid, Study.state, Study.updated_at).where(
            Study.state.in_([QUEUED, PROCESSING, DELIVERING]), Study.updated_at < cutoff
        )
        if args.study:
            query = query.where(Study.study_instance_uid == args.study)
        stuck = s.execute(query).all()
    for uid, state, since in stuck:
        print(f"stuck: study {uid} {state} since {since:%Y-%m-%d %H:%M:%S}")
    if args.list or not stuck:
        return 0
    celery = create_celery(settings)
    sweeper = Sweeper(
        sessions,  # type: ignore[arg-type]
        StudyEnqueuer(celery, settings.queue.study_task, settings.queue.inference_queue),
        redeliver=DeliveryEnqueuer(celery, settings.queue.inference_queue),
        lease=args.stuck * 60,  # "queued for MINUTES"; a live worker's lease is never taken
        retry_delay=settings.delivery.retry_delay,
    )
    sent = sweeper.sweep(queued_now=True)
    print(f"sent again: {sent} task(s) for {len(stuck)} stuck study(ies)")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import func, select

    from dicom_node.addresses import parse_destination
    from worker.db.engine import make_session_factory, open_database
    from worker.db.models import Delivery
    from worker.delivery import attempt_delivery, dead_letters

    sessions = make_session_factory(open_database(settings, create=False))
    if args.stuck is not None:
        if args.stuck < 0:
            print("cxr-triage replay: --stuck needs minutes >= 0", file=sys.stderr)
            return 2
        _stuck(args, settings, sessions)
    letters = dead_letters(sessions, args.study)
    if not letters:
        print("no dead letters")
        return 0
    for object_id, dest, uid in letters:
        print(f"dead: object {object_id} of study {uid} -> {dest}")
    if args.list:
        return 0
    failed = 0
    options, stow = settings.sender_options(), settings.stow_options()
    for object_id, dest, _uid in letters:
        with sessions() as s:
            last = (
                s.scalar(
                    select(func.max(Delivery.attempt)).where(
                        Delivery.object_id == object_id, Delivery.destination == dest
                    )
                )
                or 0
            )
        ok = attempt_delivery(
            sessions,
            settings.storage.outputs_dir,
            object_id,
            parse_destination(dest),
            last + 1,
            options,
            final=True,
            stow=stow,
            lease=settings.queue.stuck_after,
        )
        failed += not ok
    print(
        f"replayed {len(letters)} delivery(ies): {len(letters) - failed} delivered, {failed} failed"
    )
    return 1 if failed else 0
