"""Claims: a task's own study, waiting studies taken into its batch, and the races between them."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import select

from worker import claims
from worker.claims import BATCHED, IN_BATCH, claim, claim_waiting, wait_for_batch
from worker.db.models import Study, StudyEvent, StudyState
from worker.db.transitions import created, move

LEASE = 30.0
_PATH = [StudyState.COMPLETE, StudyState.QUEUEING, StudyState.QUEUED]


def _study(sessions: Any, uid: str, upto: StudyState) -> int:
    """A new study moved along the way to the queue as far as ``upto``."""
    with sessions.begin() as s:
        study = Study(study_instance_uid=uid, state=StudyState.RECEIVING)
        s.add(study)
        s.flush()
        created(s, study, "first instance")
        study_id = study.id
    for to in _PATH[: _PATH.index(upto) + 1]:
        with sessions.begin() as s:
            assert move(s, study_id, to, f"to {to}")
    return study_id


def _state(sessions: Any, study_id: int) -> str:
    with sessions() as s:
        return str(s.get_one(Study, study_id).state)


def test_waiting_studies_join_a_batch_oldest_first_and_their_own_tasks_stand_back(sessions) -> None:
    leader = _study(sessions, "1.2.1", StudyState.QUEUED)
    others = [_study(sessions, f"1.2.{n}", StudyState.QUEUED) for n in (2, 3, 4)]
    not_yet = _study(sessions, "1.2.5", StudyState.COMPLETE)  # not queued: not taken
    assert claim(sessions, leader, 1, LEASE) is None
    taken = claim_waiting(sessions, leader, limit=2, lease=LEASE)
    assert [c.study_id for c in taken] == others[:2]
    assert _state(sessions, others[2]) == "queued" and _state(sessions, not_yet) == "complete"
    with sessions() as s:
        detail = s.scalars(
            select(StudyEvent.detail)
            .where(StudyEvent.study_id == others[0])
            .order_by(StudyEvent.id.desc())
        ).first()
    assert detail == f"{BATCHED} {leader}"
    # The batched study's own task must not process it a second time while the batch lives.
    assert claim(sessions, others[0], 1, LEASE) == IN_BATCH
    with sessions.begin() as s:
        assert move(s, others[0], StudyState.DELIVERING, "batch recorded it")
    assert wait_for_batch(sessions, others[0], 1, LEASE) == "duplicate"


def test_a_batch_that_died_lets_the_study_s_own_task_take_it_over(sessions) -> None:
    leader = _study(sessions, "1.3.1", StudyState.QUEUED)
    other = _study(sessions, "1.3.2", StudyState.QUEUED)
    assert claim(sessions, leader, 1, LEASE) is None
    assert [c.study_id for c in claim_waiting(sessions, leader, limit=4, lease=0.3)] == [other]
    assert claim(sessions, other, 1, LEASE) == IN_BATCH
    time.sleep(0.5)  # nobody renewed the batch's lease: its worker is gone
    assert claim(sessions, other, 1, LEASE) is None
    assert _state(sessions, other) == "processing"


def test_a_slow_batch_that_renews_its_lease_keeps_the_study(sessions) -> None:
    """Slow is not dead: as long as the owner renews, nobody takes the study over."""
    from worker.leases import renew

    leader = _study(sessions, "1.7.1", StudyState.QUEUED)
    other = _study(sessions, "1.7.2", StudyState.QUEUED)
    assert claim(sessions, leader, 1, LEASE) is None
    assert [c.study_id for c in claim_waiting(sessions, leader, limit=4, lease=0.6)] == [other]
    for _ in range(8):  # 1.6 s, well past the 0.6 s lease, renewed every 0.2 s
        renew(sessions, 0.6)
        assert claim(sessions, other, 1, LEASE) == IN_BATCH
        time.sleep(0.2)
    assert wait_for_batch(sessions, other, 1, 0.6) is None  # the renewals stopped


class _Interleaved:
    """Sessions that run another process's moves between two of claim()'s transactions."""

    def __init__(self, sessions: Any) -> None:
        self.sessions = sessions
        self.pending: list[Any] = []

    def begin(self) -> Any:
        while self.pending:
            self.pending.pop(0)()
        return self.sessions.begin()

    def __call__(self) -> Any:
        return self.sessions()


def _lose_first_move(monkeypatch: Any, interleaved: _Interleaved, to: StudyState) -> None:
    """claim()'s first move finds the row changed: another process moved it to ``to``."""
    real_move = claims.move
    calls: list[int] = []

    def other_first(s: Any, sid: int, state: Any, detail: str, **kw: Any) -> bool:
        if calls:
            return real_move(s, sid, state, detail, **kw)
        calls.append(sid)

        def other() -> None:
            with interleaved.sessions.begin() as o:
                assert real_move(o, sid, to, "the other process")

        interleaved.pending.append(other)
        return False

    monkeypatch.setattr(claims, "move", other_first)


def test_a_task_that_overtakes_the_node_s_queued_commit_still_claims(sessions, monkeypatch) -> None:
    """The broker delivers the task before the node has recorded queueing -> queued."""
    study_id = _study(sessions, "1.4.1", StudyState.QUEUEING)
    interleaved = _Interleaved(sessions)
    _lose_first_move(monkeypatch, interleaved, StudyState.QUEUED)
    assert claim(interleaved, study_id, 1, LEASE) is None  # type: ignore[arg-type]
    assert _state(sessions, study_id) == "processing"


def test_a_task_that_loses_the_race_to_another_worker_stands_back(sessions, monkeypatch) -> None:
    study_id = _study(sessions, "1.5.1", StudyState.QUEUED)
    interleaved = _Interleaved(sessions)
    _lose_first_move(monkeypatch, interleaved, StudyState.PROCESSING)
    assert claim(interleaved, study_id, 1, LEASE) == "taken by another worker"  # type: ignore[arg-type]


def test_a_batch_taking_the_study_as_its_task_claims_it_leaves_one_owner(
    sessions, monkeypatch
) -> None:
    """Another worker's batch moves the study to processing between claim()'s read and its move.

    On SQLite (no row locks; reads run before the write transaction) claim() then moved it on
    from processing and both processed it: bench/pipeline_latency.py, 2026-12-03, "study ... left
    processing while it was processed". On PostgreSQL claim()'s row lock holds the batch back.
    """
    leader = _study(sessions, "1.6.1", StudyState.QUEUED)
    study_id = _study(sessions, "1.6.2", StudyState.QUEUED)
    assert claim(sessions, leader, 1, LEASE) is None
    real_move = claims.move
    batch: list[list[Any]] = []
    threads: list[threading.Thread] = []

    def batch_first(s: Any, sid: int, to: Any, detail: str, **kw: Any) -> bool:
        if sid == study_id and not threads:
            other = threading.Thread(
                target=lambda: batch.append(claim_waiting(sessions, leader, limit=4, lease=LEASE))
            )
            threads.append(other)
            other.start()
            other.join(2)  # PostgreSQL: blocked by claim()'s row lock until claim() commits
        return bool(real_move(s, sid, to, detail, **kw))

    monkeypatch.setattr(claims, "move", batch_first)
    reason = claim(sessions, study_id, 1, LEASE)
    threads[0].join(30)
    taken = [c.study_id for c in batch[0]]
    owners = (reason is None) + taken.count(study_id)
    assert owners == 1, (reason, taken)
    if reason is not None:  # the batch has it, and the task knows to wait for the batch
        assert reason == IN_BATCH
