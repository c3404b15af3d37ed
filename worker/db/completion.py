"""Study completion: receiving studies whose quiet period has passed become complete.

The rule is :class:`dicom_node.completion.CompletionPolicy`; this applies it to the database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.completion import CompletionPolicy
from worker.db.models import COMPLETE, RECEIVING, SKIPPED, Association, Instance, Study, utcnow
from worker.db.transitions import move

# Built once: the monitor runs it every second.
_RECEIVING_STUDIES = (
    select(
        Study.id,
        Study.first_instance_at,
        Study.last_instance_at,
        func.count(distinct(case((Association.ended_at.is_(None), Association.id)))),
        func.sum(case((Instance.eligible, 1), else_=0)),
    )
    .join(Instance, Instance.study_id == Study.id)
    .join(Association, Association.id == Instance.association_id)
    .where(Study.state == RECEIVING)
    .group_by(Study.id, Study.first_instance_at, Study.last_instance_at)
)


class StudyCompletion:
    """Marks due ``receiving`` studies ``complete`` (or ``skipped`` with no eligible image)."""

    def __init__(self, sessions: sessionmaker[Session], policy: CompletionPolicy) -> None:
        self.sessions = sessions
        self.policy = policy
        #: After a pass, when the earliest study still receiving becomes due (None: none).
        self.next_due: datetime | None = None

    def complete_due(self) -> int:
        now = utcnow()
        done = 0
        with self.sessions() as s:
            rows = s.execute(_RECEIVING_STUDIES).all()
        due: list[datetime] = []
        for study_id, first, last, n_open, n_eligible in rows:
            verdict = self.policy.verdict(
                open_associations=int(n_open),
                first_received=first,
                last_received=last,
                now=now,
            )
            if verdict is None:
                due.append(
                    self.policy.due_at(
                        open_associations=int(n_open), first_received=first, last_received=last
                    )
                )
                continue
            to_state = COMPLETE if n_eligible else SKIPPED
            detail = (
                f"{verdict}: {n_eligible} eligible instance(s)"
                if n_eligible
                else f"{verdict}: no eligible instance"
            )
            with self.sessions.begin() as s:
                # Only if nothing arrived since we looked (last_instance_at unchanged).
                if move(
                    s,
                    study_id,
                    to_state,
                    detail,
                    expect=[RECEIVING],
                    where=[Study.last_instance_at == last],
                    at=now,
                    completed_at=now,
                    completion=verdict,
                ):
                    done += 1
        self.next_due = min(due, default=None)
        return done
