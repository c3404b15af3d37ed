"""The node's study monitor: the thread that completes studies, queues them, and sweeps.

Each pass: due ``receiving`` studies become complete (:mod:`worker.db.completion`), complete
ones go to the broker (:mod:`worker.db.outbox`), and work nobody holds a lease on is sent
again (:mod:`worker.db.sweeper`). The state lives in the database, so a restarted node simply
carries on; one process of a ``listen --processes`` group runs it for all.
"""

from __future__ import annotations

import logging
import threading

from worker.db.completion import StudyCompletion
from worker.db.models import utcnow
from worker.db.outbox import Outbox
from worker.db.sweeper import Sweeper

logger = logging.getLogger(__name__)


class StudyMonitor:
    """Background thread running :meth:`run_once` every ``interval`` seconds, and sooner when a
    study's quiet period ends before that (the first result should not wait for the clock)."""

    def __init__(
        self,
        completion: StudyCompletion,
        outbox: Outbox,
        sweeper: Sweeper,
        interval: float = 1.0,
    ) -> None:
        self.completion = completion
        self.outbox = outbox
        self.sweeper = sweeper
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> tuple[int, int]:
        """One pass: complete due studies, queue complete ones, sweep. Never raises."""
        completed = queued = 0
        try:
            completed = self.completion.complete_due()
        except Exception:
            logger.exception("study completion pass failed; retrying in %.1f s", self.interval)
        try:
            queued = self.outbox.dispatch()
        except Exception:
            logger.exception("queue dispatch pass failed; retrying in %.1f s", self.interval)
        try:
            self.sweeper.sweep()
        except Exception:
            logger.exception("stuck-study sweep failed; retrying in %.1f s", self.interval)
        return completed, queued

    def _run(self) -> None:
        # The first pass at once: a restarted node completes and queues what became due while
        # it was down without waiting an interval, and the pass that first uses each of its
        # database statements (about 20 ms on SQLite) runs before associations arrive.
        while True:
            self.run_once()
            if self._stop.wait(self.pause()):
                return

    def pause(self) -> float:
        """Seconds until the next pass: the interval, or less when a study becomes due sooner."""
        due = self.completion.next_due
        if due is None:
            return self.interval
        # A few milliseconds late rather than early: an early pass finds it not yet due.
        return min(self.interval, max(0.0, (due - utcnow()).total_seconds()) + 0.005)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="study-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
