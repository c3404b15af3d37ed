"""Who processes a study: a task claims its own study, and may take waiting ones into its batch.

A claim is a move to ``processing`` (see :func:`worker.db.transitions.move`) that takes the
study's lease (:mod:`worker.leases`), so of two workers racing for a study exactly one wins. A
study in ``processing`` is claimable again only once its lease has run out: its worker died or
hung. A task that finds its study leased (in another task's batch, or a redelivered task whose
first run is still working) waits for the lease to end (:func:`wait_for_batch`): mostly the
owner finishes the study and the task has nothing left to do.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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
    StudyState,
    utcnow,
)
from worker.db.transitions import move
from worker.leases import hold, owner

logger = logging.getLogger(__name__)

_CLAIMABLE = {COMPLETE, QUEUEING, QUEUED, PROCESSING, FAILED}
# The states a study passes through on its way to the queue, in which nobody processes it.
_WAITING = (COMPLETE, QUEUEING, QUEUED)
#: The event detail of a study taken into another study's batch (followed by that study's id).
BATCHED = "batched with study"
#: Answer of :func:`claim` for a study whose lease another process holds.
IN_BATCH = "leased by another worker"


@dataclass(frozen=True)
class Claimed:
    """A study revision this task now processes, with its Study Instance UID."""

    study_id: int
    revision: int
    study_uid: str


def _leased(study: Study) -> bool:
    """Does a live lease (someone else's, or an earlier task's of ours) hold the study?"""
    return (
        study.state == PROCESSING
        and study.lease_owner is not None
        and study.lease_until is not None
        and study.lease_until > utcnow()
    )


def _lease(lease: float) -> dict[str, Any]:
    return {"lease_owner": owner(), "lease_until": utcnow() + timedelta(seconds=lease)}


def claim(
    sessions: sessionmaker[Session], study_id: int, revision: int, lease: float
) -> str | None:
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
            if _leased(study):
                return IN_BATCH
            if attempt and study.state not in _WAITING:
                return "taken by another worker"  # it left the waiting states under us
            # Only from the state just looked at: on SQLite (no row locks; reads run before the
            # write transaction) a batch can take the study between that read and this move,
            # and processing -> processing would then give it two owners.
            seen = StudyState(study.state)
            if move(
                s, study_id, PROCESSING, f"revision {revision}", expect=[seen], **_lease(lease)
            ):
                hold([study_id])
                return None
            if study.state not in _WAITING:
                return "taken by another worker"
        # Read again in a new transaction: the node may have moved it on to the next waiting
        # state, or a worker may have claimed it.
    return "taken by another worker"


def wait_for_batch(
    sessions: sessionmaker[Session],
    study_id: int,
    revision: int,
    lease: float,
    *,
    poll: float = 0.1,
) -> str | None:
    """Claim a leased study once its lease ends: mostly "duplicate" (its owner finished it).

    Waits at most two lease lengths: an owner still renewing after that is alive and slow, and
    this task leaves the study to it (if the owner dies later, the sweeper re-dispatches it).
    """
    deadline = time.monotonic() + 2 * lease + 1.0
    reason = claim(sessions, study_id, revision, lease)
    while reason == IN_BATCH and time.monotonic() < deadline:
        time.sleep(poll)
        reason = claim(sessions, study_id, revision, lease)
    return reason


def claim_waiting(
    sessions: sessionmaker[Session], leader: int, limit: int, lease: float, wait: float = 0.0
) -> list[Claimed]:
    """Take up to ``limit`` queued studies into study ``leader``'s batch, oldest first.

    Waits at most ``wait`` seconds for more studies to be queued when fewer are waiting.
    """
    claimed: list[Claimed] = []
    deadline = time.monotonic() + wait
    while len(claimed) < limit:
        with sessions.begin() as s:
            waiting = s.execute(
                select(Study.id, Study.revision, Study.study_instance_uid)
                .where(Study.state == QUEUED, Study.id != leader)
                .order_by(Study.queued_at, Study.id)
                .limit(limit - len(claimed))
            ).all()
            for study_id, revision, study_uid in waiting:
                # Lost races are simply skipped: that study's own task or another batch has it.
                moved = move(
                    s, study_id, PROCESSING, f"{BATCHED} {leader}", expect=[QUEUED], **_lease(lease)
                )
                if moved:
                    hold([study_id])
                    claimed.append(Claimed(study_id, revision, study_uid))
        if len(claimed) >= limit or time.monotonic() >= deadline:
            break
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    return claimed
