"""The sweeper: work whose lease ran out, and tasks the broker lost, are sent again.

Leases are held and renewed by the workers (:mod:`worker.leases`); the sweeper runs beside the
outbox in the node's study monitor and takes over only what nobody renews.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import (
    DELIVERING,
    PROCESSING,
    QUEUED,
    Delivery,
    ProducedObject,
    Study,
    StudyState,
    WorkerHeartbeat,
    utcnow,
)
from worker.db.outbox import Enqueue
from worker.db.transitions import move
from worker.leases import owner

logger = logging.getLogger(__name__)

#: Enqueue one delivery attempt: (object id, destination, attempt number).
Redeliver = Callable[[int, str, int], None]


class Sweeper:
    """Sends again the tasks of studies and deliveries nobody holds a live lease on.

    Parameters
    ----------
    lease : float
        Seconds a lease lasts (``CXR_STUCK_AFTER``).
    retry_delay : callable
        Seconds a failed delivery attempt waits before the next, by attempt number.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        enqueue: Enqueue,
        redeliver: Redeliver | None = None,
        lease: float = 45.0,
        retry_delay: Callable[[int], float] = lambda attempt: 0.0,
    ) -> None:
        self.sessions = sessions
        self.enqueue = enqueue
        self.redeliver = redeliver
        self.lease = timedelta(seconds=lease)
        self.retry_delay = retry_delay
        self._next_sweep = 0.0

    def sweep(self, *, queued_now: bool = False) -> int:
        """Take over work whose lease ran out, and send again tasks the broker lost.

        - ``processing`` whose lease ran out (its worker died or hangs): the study task again.
        - ``delivering``: an attempt in flight whose lease ran out, a retry overdue by a lease
          (its task was lost), or a planned first attempt of a study nobody holds: sent again.
        - ``queued`` for a lease, while workers are alive and have been idle for a lease (so
          the broker has no task left to give them: it lost them, e.g. Redis restarted empty);
          ``queued_now`` sends them regardless (``cxr-triage replay --stuck``).

        Live leases are never taken over, however long their work takes. Tasks go out again
        with their deterministic ids and the same result UIDs, so a duplicate is harmless.
        Runs at most once every third of a lease.
        """
        if time.monotonic() < self._next_sweep:
            return 0
        self._next_sweep = time.monotonic() + self.lease.total_seconds() / 3
        now = utcnow()
        expired = or_(Study.lease_until.is_(None), Study.lease_until < now)
        with self.sessions() as s:
            dead = s.scalars(select(Study.id).where(Study.state == PROCESSING, expired)).all()
            delivering = s.scalars(
                select(Study.id).where(
                    Study.state == DELIVERING, or_(Study.lease_owner.is_(None), expired)
                )
            ).all()
            lost: list[int] = []
            if queued_now or self._workers_idle(s, now):
                lost = list(
                    s.scalars(
                        select(Study.id).where(
                            Study.state == QUEUED, Study.updated_at < now - self.lease
                        )
                    ).all()
                )
        sent = 0
        try:
            for study_id in dead:
                sent += self._requeue(study_id, PROCESSING, now)
            for study_id in lost:
                sent += self._requeue(study_id, QUEUED, now)
            for study_id in delivering:
                sent += self._redeliver(study_id, now)
        except Exception as exc:
            logger.warning("could not re-dispatch stuck work: %s", exc)  # the next sweep tries
        return sent

    def _workers_idle(self, s: Session, now: datetime) -> bool:
        """Workers are alive, and none has held a study for a lease."""
        alive = s.scalar(select(func.count()).where(WorkerHeartbeat.seen_at > now - self.lease))
        last_held = s.scalar(select(func.max(Study.lease_until)))
        return bool(alive) and (last_held is None or last_held <= now - self.lease)

    def _requeue(self, study_id: int, state: str, now: datetime) -> int:
        with self.sessions() as s:
            study = s.get_one(Study, study_id)
        task_id = self.enqueue(study)
        if state == PROCESSING:
            detail = f"re-dispatched task {task_id}: the lease of {study.lease_owner} ran out"
            still = or_(Study.lease_until.is_(None), Study.lease_until < now)
        else:
            detail = f"re-dispatched task {task_id}: queued while the workers were idle"
            still = Study.updated_at < now - self.lease
        with self.sessions.begin() as s:
            moved = move(
                s,
                study_id,
                QUEUED,
                detail,
                expect=[StudyState(state)],
                where=[still],
                lease_owner=None,
            )
        if moved:
            logger.warning("study %s: %s", study.study_instance_uid, detail)
        return int(moved)

    def _redeliver(self, study_id: int, now: datetime) -> int:
        if self.redeliver is None:
            return 0
        with self.sessions() as s:
            revision = s.scalar(select(Study.revision).where(Study.id == study_id))
            last = (
                select(func.max(Delivery.id))
                .join(ProducedObject, ProducedObject.id == Delivery.object_id)
                .where(ProducedObject.study_id == study_id, ProducedObject.revision == revision)
                .group_by(Delivery.object_id, Delivery.destination)
            )
            latest = s.scalars(select(Delivery).where(Delivery.id.in_(last))).all()
            due = [d for d in latest if self._delivery_lost(d, now)]
            for d in due:
                self.redeliver(d.object_id, d.destination, d.attempt + 1)
                # Held by the sweeper for a lease: the task just sent gets a lease to start.
                s.execute(
                    update(Delivery)
                    .where(Delivery.id == d.id)
                    .values(lease_owner=f"sweeper {owner()}"[:64], lease_until=now + self.lease)
                )
            s.commit()
        if due:
            with self.sessions.begin() as s:
                move(
                    s,
                    study_id,
                    DELIVERING,
                    f"re-dispatched {len(due)} delivery attempt(s) whose lease ran out",
                    expect=[DELIVERING],
                )
        return len(due)

    def _delivery_lost(self, d: Delivery, now: datetime) -> bool:
        if d.lease_until is not None and d.lease_until >= now:
            return False  # in flight (renewed by its sender) or just re-dispatched
        if d.outcome in ("sending", "pending"):
            return True
        if d.outcome == "retry":
            delay = self.retry_delay(d.attempt)
            return d.at + timedelta(seconds=delay) + self.lease < now
        return False
