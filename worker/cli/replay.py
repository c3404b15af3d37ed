"""``cxr-triage replay``: send dead-lettered results again."""

from __future__ import annotations

import argparse

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
    p.add_argument("--list", action="store_true", help="only list the dead letters")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import func, select

    from dicom_node.addresses import Destination
    from worker.db.engine import make_session_factory, open_database
    from worker.db.models import Delivery
    from worker.delivery import attempt_delivery, dead_letters

    sessions = make_session_factory(open_database(settings))
    letters = dead_letters(sessions, args.study)
    if not letters:
        print("no dead letters")
        return 0
    for object_id, dest, uid in letters:
        print(f"dead: object {object_id} of study {uid} -> {dest}")
    if args.list:
        return 0
    failed = 0
    options = settings.sender_options()
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
            settings.outputs_dir,
            object_id,
            Destination.parse(dest),
            last + 1,
            options,
            final=True,
        )
        failed += not ok
    print(
        f"replayed {len(letters)} delivery(ies): {len(letters) - failed} delivered, {failed} failed"
    )
    return 1 if failed else 0
