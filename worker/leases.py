"""Leases: a worker process owns what it works on for as long as it says it is alive.

A claimed study and an in-flight delivery carry ``lease_owner`` (this process) and
``lease_until``. The :class:`Heartbeat` of the owning process renews every lease it holds each
third of the lease length, and records the process in ``worker_heartbeats``. A process that
dies, or hangs, stops renewing: its leases run out within one lease length and the node's
sweeper (:class:`worker.db.sweeper.Sweeper`) takes the work over. Slow
work is never taken over, however long it takes, because its owner keeps renewing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import DELIVERING, PROCESSING, Delivery, Study, WorkerHeartbeat, utcnow

logger = logging.getLogger(__name__)


class LeaseLostError(RuntimeError):
    """This process's lease ran out and another worker took the work over."""


def owner() -> str:
    """``host:pid`` of this process (after a fork, the child's own)."""
    return f"{socket.gethostname()[:50]}:{os.getpid()}"


#: What this process works on now: the heartbeat renews these and nothing else, so a task that
#: ended without being able to say so (the database was down) stops holding its studies.
_held_studies: set[int] = set()
_sending: set[int] = set()  # Delivery row ids in flight
_held_lock = threading.Lock()


def hold(study_ids: list[int] | None = None, deliveries: list[int] | None = None) -> None:
    """Note that this process now works on these studies / delivery attempts."""
    with _held_lock:
        _held_studies.update(study_ids or [])
        _sending.update(deliveries or [])


def done_sending(deliveries: list[int]) -> None:
    """These delivery attempts are over (their rows say how)."""
    with _held_lock:
        _sending.difference_update(deliveries)


def renew(sessions: sessionmaker[Session], lease: float) -> None:
    """Extend the leases of what this process works on, and say that it is alive."""
    with _held_lock:
        studies, deliveries = sorted(_held_studies), sorted(_sending)
    me, now = owner(), utcnow()
    until = now + timedelta(seconds=lease)
    with sessions.begin() as s:
        if studies:
            s.execute(
                update(Study)
                .where(
                    Study.id.in_(studies),
                    Study.lease_owner == me,
                    Study.state.in_([PROCESSING, DELIVERING]),
                )
                .values(lease_until=until)
                .execution_options(synchronize_session=False)
            )
        if deliveries:
            s.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_(deliveries),
                    Delivery.lease_owner == me,
                    Delivery.outcome == "sending",
                )
                .values(lease_until=until)
                .execution_options(synchronize_session=False)
            )
        _seen(s, me, now)


def _seen(s: Session, me: str, now: object) -> None:
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(WorkerHeartbeat).values(owner=me, started_at=now, seen_at=now)
    s.execute(stmt.on_conflict_do_update(index_elements=["owner"], set_={"seen_at": now}))


def release(sessions: sessionmaker[Session]) -> None:
    """Let go of every study this process holds (its task is over, whatever became of them).

    Never raises: if the database cannot be told, the heartbeat has stopped renewing anyway,
    and the leases run out.
    """
    with _held_lock:
        _held_studies.clear()
    try:
        with sessions.begin() as s:
            s.execute(
                update(Study)
                .where(Study.lease_owner == owner())
                .values(lease_owner=None, lease_until=utcnow())
                .execution_options(synchronize_session=False)
            )
    except Exception as exc:
        logger.warning("could not release leases (they will run out): %s", exc)


def forget(sessions: sessionmaker[Session]) -> None:
    """Remove this process from ``worker_heartbeats`` (it is stopping)."""
    with sessions.begin() as s:
        s.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.owner == owner()))


class Heartbeat:
    """A daemon thread that calls :func:`renew` every third of ``lease`` seconds."""

    def __init__(self, sessions: sessionmaker[Session], lease: float) -> None:
        self.sessions = sessions
        self.lease = lease
        self._stop = threading.Event()
        self.beat()
        threading.Thread(target=self._run, name="lease-heartbeat", daemon=True).start()

    def beat(self) -> None:
        try:
            renew(self.sessions, self.lease)
        except Exception as exc:  # the database is away: leases may run out, work is redone
            logger.warning("could not renew leases: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        try:
            forget(self.sessions)
        except Exception as exc:
            logger.debug("could not remove the heartbeat row: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            self.beat()


_heartbeats: dict[int, Heartbeat] = {}
_lock = threading.Lock()


def ensure_heartbeat(sessions: sessionmaker[Session], lease: float) -> Heartbeat:
    """This process's heartbeat, started on first use (a thread does not survive a fork)."""
    with _lock:
        beat = _heartbeats.get(os.getpid())
        if beat is None:
            beat = _heartbeats[os.getpid()] = Heartbeat(sessions, lease)
        return beat
