"""The study state machine: one enum, allowed moves only, an event for every move."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db.models import TRANSITIONS, Study, StudyEvent, StudyState
from worker.db.transitions import InvalidTransitionError, created, move


def _new_study(sessions, uid: str = "1.2.3") -> int:
    with sessions.begin() as s:
        study = Study(study_instance_uid=uid, state=StudyState.RECEIVING)
        s.add(study)
        s.flush()
        created(s, study, "first instance")
        return study.id


def _events(sessions, study_id: int) -> list[tuple[str | None, str]]:
    with sessions() as s:
        rows = s.scalars(select(StudyEvent).where(StudyEvent.study_id == study_id)).all()
        return [(e.from_state, e.to_state) for e in sorted(rows, key=lambda e: e.id)]


def test_every_state_has_its_moves_and_every_non_terminal_state_a_way_out() -> None:
    assert set(TRANSITIONS) == set(StudyState)
    for state, targets in TRANSITIONS.items():
        assert targets <= set(StudyState)
        assert StudyState.RECEIVING in targets or state == StudyState.RECEIVING
        if not state.terminal:
            assert targets - {state}, f"{state} has no way out"


def test_a_study_moves_along_the_happy_path_with_an_event_per_move(sessions) -> None:
    study_id = _new_study(sessions)
    path = [
        StudyState.COMPLETE,
        StudyState.QUEUEING,
        StudyState.QUEUED,
        StudyState.PROCESSING,
        StudyState.DELIVERING,
        StudyState.DONE,
    ]
    for to in path:
        with sessions.begin() as s:
            assert move(s, study_id, to, f"to {to}")
    assert _events(sessions, study_id) == [
        (None, "receiving"),
        ("receiving", "complete"),
        ("complete", "queueing"),
        ("queueing", "queued"),
        ("queued", "processing"),
        ("processing", "delivering"),
        ("delivering", "done"),
    ]


def test_a_move_the_machine_forbids_raises_and_changes_nothing(sessions) -> None:
    study_id = _new_study(sessions)
    with pytest.raises(InvalidTransitionError), sessions.begin() as s:
        move(s, study_id, StudyState.DONE, "skipping every step")
    with Session(sessions.kw["bind"]) as s:
        assert s.get_one(Study, study_id).state == "receiving"
    assert _events(sessions, study_id) == [(None, "receiving")]


def test_expect_makes_a_move_conditional(sessions) -> None:
    study_id = _new_study(sessions)
    with sessions.begin() as s:
        assert not move(s, study_id, StudyState.QUEUEING, "claim", expect=[StudyState.COMPLETE])
        assert move(s, study_id, StudyState.COMPLETE, "quiet")
        assert move(s, study_id, StudyState.QUEUEING, "claim", expect=[StudyState.COMPLETE])
        # A second claimant finds it taken.
        assert not move(s, study_id, StudyState.QUEUEING, "claim", expect=[StudyState.COMPLETE])
