"""Sending produced objects to the destinations, and recording every attempt."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import fhir, hl7
from dicom_node.addresses import AnyDestination, FhirDestination, Hl7Destination, StowDestination
from dicom_node.sender import SenderOptions, SendResult, send_files
from dicom_node.stow import StowOptions, stow_files
from worker.db.models import (
    DEAD_LETTER,
    DELIVERING,
    DONE,
    TRANSITIONS,
    Delivery,
    ProducedObject,
    Study,
    utcnow,
)
from worker.db.transitions import move
from worker.leases import done_sending, ensure_heartbeat, hold, owner

logger = logging.getLogger(__name__)


def attempt_delivery(
    sessions: sessionmaker[Session],
    outputs: Path,
    object_id: int,
    destination: AnyDestination,
    attempt: int,
    options: SenderOptions,
    *,
    final: bool,
    stow: StowOptions | None = None,
    lease: float = 60.0,
) -> bool:
    """Send one object to one destination (C-STORE, or STOW-RS with ``stow``'s credentials)
    and record the attempt; True if it was stored.

    ``final`` marks the last allowed attempt: a failure is then recorded as ``dead`` and the
    study moves to ``dead_letter`` (``cxr-triage replay`` sends it again later).
    """
    sent = attempt_deliveries(
        sessions,
        outputs,
        [object_id],
        destination,
        attempt,
        options,
        final=final,
        stow=stow,
        lease=lease,
    )
    return sent[object_id]


def attempt_deliveries(
    sessions: sessionmaker[Session],
    outputs: Path,
    object_ids: list[int],
    destination: AnyDestination,
    attempt: int,
    options: SenderOptions,
    *,
    final: bool,
    stow: StowOptions | None = None,
    lease: float = 60.0,
) -> dict[int, bool]:
    """:func:`attempt_delivery` for several objects over one association; object id -> stored.

    Each object's attempt is recorded on its own, as if it had been sent alone: first as
    ``sending`` under this process's lease (so the sweeper can tell a slow attempt, whose lease
    is renewed, from a dead one), then with its outcome.
    """
    ensure_heartbeat(sessions, lease)
    with sessions() as s:
        objects = {i: s.get_one(ProducedObject, i) for i in object_ids}
    paths = {i: outputs / o.path for i, o in objects.items()}
    with sessions.begin() as s:
        in_flight = {
            i: Delivery(
                object_id=i,
                destination=str(destination),
                attempt=attempt,
                status=None,
                outcome="sending",
                at=utcnow(),
                lease_owner=owner(),
                lease_until=utcnow() + timedelta(seconds=lease),
            )
            for i in object_ids
        }
        s.add_all(in_flight.values())
        s.flush()
        row_ids = {i: d.id for i, d in in_flight.items()}
    hold(deliveries=list(row_ids.values()))
    try:
        return _send_and_record(
            sessions, objects, paths, row_ids, destination, attempt, options, final, stow
        )
    finally:
        done_sending(list(row_ids.values()))


def _send_and_record(
    sessions: sessionmaker[Session],
    objects: dict[int, ProducedObject],
    paths: dict[int, Path],
    row_ids: dict[int, int],
    destination: AnyDestination,
    attempt: int,
    options: SenderOptions,
    final: bool,
    stow: StowOptions | None,
) -> dict[int, bool]:
    try:
        if isinstance(destination, StowDestination):
            summary = stow_files(paths.values(), destination, stow)
        elif isinstance(destination, Hl7Destination):
            summary = hl7.send_results(paths.values(), destination, timeout=options.dimse_timeout)
        elif isinstance(destination, FhirDestination):
            summary = fhir.send_results(paths.values(), destination, stow)
        else:
            summary = send_files(paths.values(), destination, options)
        by_path = {r.source: r for r in summary.results}
        results = {
            i: by_path.get(str(p)) or SendResult(str(p), "", None, "no result from the sender")
            for i, p in paths.items()
        }
    except Exception as exc:
        # Whatever went wrong is one failed attempt for this destination only.
        logger.exception("delivery to %s raised", destination)
        error = f"{type(exc).__name__}: {exc}"
        results = {i: SendResult(str(p), "", None, error) for i, p in paths.items()}
    outcomes = {
        i: "delivered" if r.ok else ("dead" if final else "retry") for i, r in results.items()
    }
    with sessions.begin() as s:
        for i, result in results.items():
            s.execute(
                update(Delivery)
                .where(Delivery.id == row_ids[i])
                .values(
                    status=result.status,
                    outcome=outcomes[i],
                    error=result.error,
                    at=utcnow(),
                    lease_owner=None,
                    lease_until=None,
                )
            )
    for i, result in results.items():
        if result.ok:
            logger.info("delivered %s to %s (attempt %d)", paths[i].name, destination, attempt)
        else:
            logger.warning(
                "delivery of %s to %s failed (attempt %d, %s): %s",
                paths[i].name,
                destination,
                attempt,
                outcomes[i],
                result.error or result.label,
            )
    for study_id in sorted({o.study_id for o in objects.values()}):
        update_study_state(sessions, study_id)
    return {i: r.ok for i, r in results.items()}


def latest_attempts(
    sessions: sessionmaker[Session], study_id: int
) -> dict[tuple[int, str], tuple[str, int, datetime]]:
    """(outcome, attempt number, time) of the latest attempt per (object, destination) of a
    study's current revision."""
    with sessions() as s:
        study = s.get_one(Study, study_id)
        latest = (
            select(Delivery.object_id, Delivery.destination, func.max(Delivery.id).label("last"))
            .join(ProducedObject, ProducedObject.id == Delivery.object_id)
            .where(ProducedObject.study_id == study_id, ProducedObject.revision == study.revision)
            .group_by(Delivery.object_id, Delivery.destination)
            .subquery()
        )
        rows = s.execute(
            select(
                Delivery.object_id,
                Delivery.destination,
                Delivery.outcome,
                Delivery.attempt,
                Delivery.at,
            ).join(latest, Delivery.id == latest.c.last)
        ).all()
    return {(r.object_id, r.destination): (r.outcome, r.attempt, r.at) for r in rows}


def pending(sessions: sessionmaker[Session], study_id: int) -> dict[tuple[int, str], str]:
    """Latest outcome per (object, destination) of a study's current revision."""
    return {key: outcome for key, (outcome, _, _) in latest_attempts(sessions, study_id).items()}


def update_study_state(sessions: sessionmaker[Session], study_id: int) -> str | None:
    """``done`` when every object reached every destination, ``dead_letter`` if one gave up."""
    outcomes = set(pending(sessions, study_id).values())
    new = DONE if outcomes == {"delivered"} else DEAD_LETTER if "dead" in outcomes else None
    if new is None:
        return None
    detail = "all results delivered" if new == DONE else "a delivery gave up after its last retry"
    with sessions.begin() as s:
        from_states = [st for st in (DELIVERING, DEAD_LETTER, DONE) if new in TRANSITIONS[st]]
        move(s, study_id, new, detail, expect=from_states)
    return new


def dead_letters(
    sessions: sessionmaker[Session], study_uid: str | None = None
) -> list[tuple[int, str, str]]:
    """(object id, destination, study UID) of every delivery whose latest attempt is dead."""
    with sessions() as s:
        query = select(Study.id, Study.study_instance_uid).where(Study.state == DEAD_LETTER)
        if study_uid:
            query = query.where(Study.study_instance_uid == study_uid)
        studies = s.execute(query).all()
    out = []
    for study_id, uid in studies:
        for (object_id, dest), outcome in pending(sessions, study_id).items():
            if outcome == "dead":
                out.append((object_id, dest, uid))
    return out
