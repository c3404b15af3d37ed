"""Leases and the sweeper: dead work is taken over within a lease, slow work never.

The sweeper's decisions on SQLite and PostgreSQL, with the enqueue and redeliver calls recorded
(tests/test_queue.py and tests/test_faults.py run the same sweeper against Redis and Celery).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from worker.claims import claim
from worker.db.models import (
    Delivery,
    ProducedObject,
    Study,
    StudyState,
    WorkerHeartbeat,
    utcnow,
)
from worker.db.sweeper import Sweeper
from worker.db.transitions import created, move
from worker.leases import done_sending, hold, owner, release, renew

LEASE = 0.6


class _Sent:
    """Records what the sweeper sends (the broker's side is tested against Redis elsewhere)."""

    def __init__(self) -> None:
        self.studies: list[int] = []
        self.deliveries: list[tuple[int, str, int]] = []

    def enqueue(self, study: Study) -> str:
        self.studies.append(study.id)
        return f"study-{study.id}-r{study.revision}"

    def redeliver(self, object_id: int, destination: str, attempt: int) -> None:
        self.deliveries.append((object_id, destination, attempt))


def _store(sessions: Any, sent: _Sent, lease: float = LEASE, **kw: Any) -> Sweeper:
    return Sweeper(sessions, sent.enqueue, redeliver=sent.redeliver, lease=lease, **kw)


def _sweep(store: Sweeper) -> int:
    store._next_sweep = 0.0  # as if a third of a lease had passed since the last sweep
    return store.sweep()


def _queued(sessions: Any, uid: str) -> int:
    with sessions.begin() as s:
        study = Study(study_instance_uid=uid, state=StudyState.RECEIVING)
        s.add(study)
        s.flush()
        created(s, study, "first instance")
        study_id = study.id
    for to in (StudyState.COMPLETE, StudyState.QUEUEING, StudyState.QUEUED):
        with sessions.begin() as s:
            assert move(s, study_id, to, f"to {to}")
    return study_id


def _study(sessions: Any, study_id: int) -> Study:
    with sessions() as s:
        return s.get_one(Study, study_id)


def _age(sessions: Any, study_id: int, seconds: float) -> None:
    """Make the study's last change ``seconds`` old."""
    with sessions.begin() as s:
        s.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def test_a_dead_worker_s_study_is_taken_over_a_slow_one_never(sessions) -> None:
    sent = _Sent()
    store = _store(sessions, sent)
    study_id = _queued(sessions, "1.9.1")
    assert claim(sessions, study_id, 1, LEASE) is None
    assert _study(sessions, study_id).lease_owner == owner()
    for _ in range(6):  # 1.2 s of slow work, two lease lengths, renewed all along
        renew(sessions, LEASE)
        assert _sweep(store) == 0
        time.sleep(0.2)
    assert sent.studies == []
    time.sleep(LEASE + 0.1)  # the worker died: nobody renews
    assert _sweep(store) == 1
    study = _study(sessions, study_id)
    assert sent.studies == [study_id] and study.state == "queued" and study.lease_owner is None
    with sessions() as s:
        assert s.scalar(select(WorkerHeartbeat.owner)) == owner()


def test_lost_queued_studies_go_again_only_when_live_workers_sit_idle(sessions) -> None:
    sent = _Sent()
    store = _store(sessions, sent)
    lost = _queued(sessions, "1.9.2")
    _age(sessions, lost, 2 * LEASE)
    # No worker alive: the broker keeps the task until one starts; nothing to send again.
    assert _sweep(store) == 0
    # A worker busy with another study (a backlog): the queued one is waiting its turn.
    busy = _queued(sessions, "1.9.3")
    assert claim(sessions, busy, 1, LEASE) is None
    renew(sessions, LEASE)
    assert _sweep(store) == 0
    # The worker finished and has been idle for a lease with a study still queued: the broker
    # lost its task.
    with sessions.begin() as s:
        assert move(s, busy, StudyState.DONE, "done", expect=[StudyState.PROCESSING])
    release(sessions)
    time.sleep(LEASE + 0.1)
    renew(sessions, LEASE)  # alive, holding nothing
    assert _sweep(store) == 1 and sent.studies == [lost]
    assert _sweep(store) == 0  # once per lease, not every sweep


def _delivering(sessions: Any, uid: str) -> tuple[int, int]:
    study_id = _queued(sessions, uid)
    assert claim(sessions, study_id, 1, LEASE) is None
    with sessions.begin() as s:
        assert move(s, study_id, StudyState.DELIVERING, "recorded")
        obj = ProducedObject(
            study_id=study_id,
            revision=1,
            kind="sr",
            sop_instance_uid=f"{uid}.99",
            series_instance_uid=f"{uid}.98",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
            path=f"{uid}.dcm",
        )
        s.add(obj)
        s.flush()
        object_id = obj.id
    release(sessions)
    return study_id, object_id


def _attempt(sessions: Any, object_id: int, outcome: str, attempt: int, **kw: Any) -> int:
    with sessions.begin() as s:
        row = Delivery(
            object_id=object_id,
            destination="PACS@127.0.0.1:104",
            attempt=attempt,
            outcome=outcome,
            at=kw.pop("at", utcnow()),
            **kw,
        )
        s.add(row)
        s.flush()
        return row.id


def test_a_slow_delivery_is_never_sent_twice_a_dead_one_once(sessions) -> None:
    sent = _Sent()
    store = _store(sessions, sent)
    _, object_id = _delivering(sessions, "1.9.4")
    until = utcnow() + timedelta(seconds=LEASE)
    row = _attempt(sessions, object_id, "sending", 1, lease_owner=owner(), lease_until=until)
    hold(deliveries=[row])  # as attempt_deliveries does while it sends
    for _ in range(6):  # a PACS answering after two lease lengths: its sender renews
        renew(sessions, LEASE)
        assert _sweep(store) == 0
        time.sleep(0.2)
    done_sending([row])  # the sender died mid-send: nobody renews
    time.sleep(LEASE + 0.1)
    assert _sweep(store) == 1
    assert sent.deliveries == [(object_id, "PACS@127.0.0.1:104", 2)]
    assert _sweep(store) == 0  # the task just sent has a lease's time to start


def test_a_retry_waits_its_turn_and_a_lost_one_goes_again(sessions) -> None:
    sent = _Sent()
    store = _store(sessions, sent, retry_delay=lambda attempt: 2.0 * attempt)
    _, object_id = _delivering(sessions, "1.9.5")
    _attempt(sessions, object_id, "retry", 3)  # the next attempt is due in 6 s
    assert _sweep(store) == 0
    ago = utcnow() - timedelta(seconds=6 + LEASE + 0.1)
    _attempt(sessions, object_id, "retry", 3, at=ago)  # due a lease ago, never ran
    assert _sweep(store) == 1 and sent.deliveries[-1][2] == 4


def test_a_task_that_could_not_release_its_studies_stops_renewing_them(sessions) -> None:
    """The database was down when the task ended: its studies' leases must still run out."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    study_id = _queued(sessions, "1.9.6")
    assert claim(sessions, study_id, 1, LEASE) is None
    claimed_until = _study(sessions, study_id).lease_until
    unreachable = sessionmaker(create_engine("sqlite:////nonexistent/folder/cxr.sqlite"))
    release(unreachable)  # logs, does not raise
    time.sleep(0.1)
    renew(sessions, LEASE)  # the heartbeat carries on once the database is back
    study = _study(sessions, study_id)
    assert study.lease_owner == owner() and study.lease_until == claimed_until
