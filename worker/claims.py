"""Who processes a study: a task claims its own study, and may take waiting ones into its batch.

A claim is a move to ``processing`` (see :func:`worker.db.transitions.move`), so of two workers
racing for a study exactly one wins. A study in ``processing`` is normally claimable again: its
worker died and the broker redelivered the task. A study taken into another task's batch is
the exception while the batch lasts: its own task, arriving meanwhile, must not process it a
second time, so it waits for the batch (:func:`wait_for_batch`) and takes the study over only
if the batch has not finished it within :data:`BATCH_LEASE` seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import (
    COMPLETE,
    DEAD_LETTER,
    DELIVERING,
    DONE,
    FAILED,
    PROCESSING,
    QUEUED,
    QUEUEING,
    Study,
    StudyEvent,
    StudyState,
    utcnow,
)
from worker.db.transitions import move

logger = logging.getLogger(__name__)

_CLAIMABLE = {COMPLETE, QUEUEING, QUEUED, PROCESSING, FAILED}
# The states a study passes through on its way to the queue, in which nobody processes it.
_WAITING = (COMPLETE, QUEUEING, QUEUED)
#: The event detail of a study taken into another study's batch (followed by that study's id).
BATCHED = "batched with study"
#: How long a batch may hold a study before that study's own task takes it over (the batch's
#: worker is then presumed dead). Far above any batch's time; a takeover of a live batch's study
#: still sends nothing twice: result UIDs are derived, and only one ``_record`` can move it on.
BATCH_LEASE = 300.0
#: Answer of :func:`claim` for a study that a live batch holds.
IN_BATCH = "in another task's batch"


@dataclass(frozen=True)
class Claimed:
    """A study revision this task now processes."""

    study_id: int
    revision: int


def _held_by_batch(s: Session, study_id: int) -> bool:
    """Is the study's latest move to ``processing`` a batch's, within the lease?"""
    event = s.scalars(
        select(StudyEvent)
        .where(StudyEvent.study_id == study_id, StudyEvent.to_state == PROCESSING)
        .order_by(StudyEvent.id.desc())
        .limit(1)
    ).first()
    if event is None or not event.detail.startswith(BATCHED):
        return False
    return bool(utcnow() - event.at < timedelta(seconds=BATCH_LEASE))


def claim(sessions: sessionmaker[Session], study_id: int, revision: int) -> str | None:
    """Move the study to ``processing``; return why not (duplicate, superseded ...) or None."""
    # The task can arrive before the node has recorded that it was queued (the broker was
    # faster than the node's commit): a study that moved on to another waiting state meanwhile
    # is claimed from there. Only a move to processing by someone else is a lost race.
    for attempt in range(len(_WAITING) + 1):
        with sessions.begin() as s:
            study = s.get(Study, study_id, with_for_update=True)
            if study is None:
                return "missing"
            if study.revision != revision:
                return "superseded"  # reopened since: the newer revision has its own task
            if study.state in (DONE, DEAD_LETTER, DELIVERING):
                return "duplicate"
            if study.state not in _CLAIMABLE:
                return f"state {study.state}"
            if study.state == PROCESSING and _held_by_batch(s, study_id):
                return IN_BATCH
            if attempt and study.state not in _WAITING:
                return "taken by another worker"  # it left the waiting states under us
            # Only from the state just looked at: on SQLite (no row locks; reads run before the
            # write transaction) a batch can take the study between that read and this move,
            # and processing -> processing would then give it two owners.
            seen = StudyState(study.state)
            if move(s, study_id, PROCESSING, f"revision {revision}", expect=[seen]):
                return None
            if study.state not in _WAITING:
                return "taken by another worker"
        # Read again in a new transaction: the node may have moved it on to the next waiting
        # state, or a worker may have claimed it.
    return "taken by another worker"


def wait_for_batch(
    sessions: sessionmaker[Session], study_id: int, revision: int, *, poll: float = 0.1
) -> str | None:
    """Claim a study that a batch holds once the batch lets go of it (bounded by the lease).

    Returns what :func:`claim` returns: mostly "duplicate" (the batch finished the study).
    """
    deadline = time.monotonic() + BATCH_LEASE + 1.0
    reason = claim(sessions, study_id, revision)
    while reason == IN_BATCH and time.monotonic() < deadline:
        time.sleep(poll)
        reason = claim(sessions, study_id, revision)
    return reason


def claim_waiting(
    sessions: sessionmaker[Session], leader: int, limit: int, wait: float = 0.0
) -> list[Claimed]:
    """Take up to ``limit`` queued studies into study ``leader``'s batch, oldest first.

    Waits at most ``wait`` seconds for more studies to be queued when fewer are waiting.
    """
    claimed: list[Claimed] = []
    deadline = time.monotonic() + wait
    while len(claimed) < limit:
        with sessions.begin() as s:
            waiting = s.execute(
                select(Study.id, Study.revision)
                .where(Study.state == QUEUED, Study.id != leader)
                .order_by(Study.queued_at, Study.id)
                .limit(limit - len(claimed))
            ).all()
            for study_id, revision in waiting:
                # Lost races are simply skipped: that study's own task or another batch has it.
                if move(s, study_id, PROCESSING, f"{BATCHED} {leader}", expect=[QUEUED]):
                    claimed.append(Claimed(study_id, revision))
        if len(claimed) >= limit or time.monotonic() >= deadline:
            break
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    return claimed
