"""The one way a study changes state: :func:`move`, which also writes its ``StudyEvent``.

A move is a conditional update (``WHERE state = <the state we read>``) so that of two processes
racing for the same study exactly one wins; the loser gets False and does nothing. Moves not in
:data:`worker.db.models.TRANSITIONS` raise, so a wrong move is a bug found in tests, not a
study in a state nothing will ever take it out of.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from worker.db.models import TRANSITIONS, Study, StudyEvent, StudyState, utcnow


class InvalidTransitionError(RuntimeError):
    """A move the state machine does not allow."""


def check(from_state: str, to: StudyState) -> None:
    """Raise :class:`InvalidTransitionError` unless ``from_state`` may move to ``to``."""
    if to not in TRANSITIONS[StudyState(from_state)]:
        raise InvalidTransitionError(f"a study cannot go from {from_state} to {to}")


def move(
    s: Session,
    study_id: int,
    to: StudyState,
    detail: str,
    *,
    expect: Iterable[StudyState] | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    at: datetime | None = None,
    **values: Any,
) -> bool:
    """Move a study to ``to`` inside the caller's transaction; True if it moved.

    Parameters
    ----------
    expect : states, optional
        Move only from one of these (a study found elsewhere is left alone: False). Without it
        the move is made from whatever state the study is in, if allowed.
    where : SQL conditions, optional
        Further conditions on the study row (e.g. "nothing arrived since we looked").
    values
        Other columns to set in the same update.

    Raises
    ------
    InvalidTransitionError
        If the study's current state (within ``expect``) may not move to ``to``.
    """
    current = s.scalar(select(Study.state).where(Study.id == study_id))
    if current is None:
        return False
    if expect is not None and current not in set(expect):
        return False
    check(current, to)
    now = at or utcnow()
    result = s.execute(
        update(Study)
        .where(Study.id == study_id, Study.state == current, *where)
        .values(state=to, updated_at=now, **values)
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False  # another process moved it first
    s.add(StudyEvent(study_id=study_id, at=now, from_state=current, to_state=to, detail=detail))
    return True


def created(s: Session, study: Study, detail: str) -> None:
    """Record the first event of a new study (it starts in ``receiving``)."""
    s.add(
        StudyEvent(
            study_id=study.id, at=utcnow(), from_state=None, to_state=study.state, detail=detail
        )
    )
