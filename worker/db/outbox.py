"""The outbox: complete studies go to the broker, each exactly once, whatever dies when."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db.models import COMPLETE, QUEUED, QUEUEING, Study, utcnow
from worker.db.transitions import move

logger = logging.getLogger(__name__)

#: Enqueue a study; returns the task id. Raises when the broker cannot take it.
Enqueue = Callable[[Study], str]

_STALE_CLAIMS = select(Study.id).where(
    Study.state == QUEUEING, Study.updated_at < bindparam("cutoff")
)
_COMPLETE_STUDIES = (
    select(Study.id).where(Study.state == COMPLETE).order_by(Study.id).limit(bindparam("limit"))
)


# A study left in "queueing" this long was claimed by a process that died mid-dispatch.
_QUEUEING_STALE = timedelta(seconds=60)
# Longest wait between attempts to reach a broker that is down, in seconds.
_MAX_BACKOFF = 30.0


class Outbox:
    """Queues complete studies through ``enqueue``; backs off while the broker is down."""

    def __init__(self, sessions: sessionmaker[Session], enqueue: Enqueue) -> None:
        self.sessions = sessions
        self.enqueue = enqueue
        # Back off while the broker is down instead of retrying (and logging) every pass.
        self._broker_failures = 0
        self._retry_at = 0.0

    def _release_stale_claims(self) -> None:
        cutoff = utcnow() - _QUEUEING_STALE
        with self.sessions.begin() as s:
            stale = s.scalars(_STALE_CLAIMS, {"cutoff": cutoff}).all()
            for study_id in stale:
                move(
                    s,
                    study_id,
                    COMPLETE,
                    "claim released: the process queueing it stopped",
                    expect=[QUEUEING],
                    where=[Study.updated_at < cutoff],
                )

    def dispatch(self, limit: int = 100) -> int:
        """The outbox: queue complete studies, each exactly once.

        A study is claimed (``complete`` -> ``queueing``) with a conditional update, so that of
        several listener processes only one sends it; it becomes ``queued`` once the broker has
        it. If the broker is down the claim is released and the study waits, still ``complete``,
        for the next pass. The task id is deterministic (``study-<id>-r<revision>``) so that the
        consumer can discard the duplicate left by a crash between sending and recording.
        """
        if time.monotonic() < self._retry_at:
            return 0
        self._release_stale_claims()
        with self.sessions() as s:
            ids = s.scalars(_COMPLETE_STUDIES, {"limit": limit}).all()
        queued = 0
        for study_id in ids:
            with self.sessions.begin() as s:
                claimed = move(s, study_id, QUEUEING, "claimed for queueing", expect=[COMPLETE])
            if not claimed:
                continue
            with self.sessions() as s:
                study = s.get_one(Study, study_id)
            try:
                task_id = self.enqueue(study)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:2000]
                with self.sessions.begin() as s:
                    move(
                        s,
                        study_id,
                        COMPLETE,
                        f"broker unavailable: {error}",
                        expect=[QUEUEING],
                        queue_attempts=Study.queue_attempts + 1,
                        last_queue_error=error,
                    )
                self._broker_failures += 1
                delay = min(_MAX_BACKOFF, 0.5 * 2 ** (self._broker_failures - 1))
                self._retry_at = time.monotonic() + delay
                logger.warning(
                    "broker unavailable, study %s stays in the outbox (retry in %.1f s): %s",
                    study.study_instance_uid,
                    delay,
                    exc,
                )
                break  # the broker is down: try the rest later
            now = utcnow()
            queued_values: dict[str, Any] = {
                "queued_at": now,
                "task_id": task_id,
                "queue_attempts": Study.queue_attempts + 1,
                "last_queue_error": None,
            }
            with self.sessions.begin() as s:
                if not move(
                    s, study_id, QUEUED, f"task {task_id}", expect=[QUEUEING], **queued_values
                ):
                    # A worker took the task before we could record it: keep the state.
                    s.execute(update(Study).where(Study.id == study_id).values(**queued_values))
            queued += 1
            self._broker_failures = 0
            logger.info(
                "queued study %s as %s",
                study.study_instance_uid,
                task_id,
                extra={"study": study.study_instance_uid},
            )
        return queued
