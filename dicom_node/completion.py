"""When a study is complete, and the thread that keeps asking.

A study is complete when every association that delivered its instances has ended and no new
instance arrived for ``quiet_seconds``; it is forced complete ``max_wait_seconds`` after its first
instance however busy it is. The state lives in the database (see ``worker.db.studies``); this
module holds only the rule and the periodic driver, so a restarted node simply carries on.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from dicom_node.interfaces import StudyTracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionPolicy:
    """Quiet period and force-complete cap, in seconds."""

    quiet_seconds: float = 5.0
    max_wait_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.quiet_seconds < 0 or self.max_wait_seconds <= 0:
            raise ValueError("quiet_seconds must be >= 0 and max_wait_seconds > 0")

    def verdict(
        self,
        *,
        open_associations: int,
        first_received: datetime,
        last_received: datetime,
        now: datetime,
    ) -> str | None:
        """Return ``"complete"``, ``"forced"`` or None (still receiving)."""
        if (now - first_received).total_seconds() >= self.max_wait_seconds:
            return "forced"
        if open_associations == 0 and (now - last_received).total_seconds() >= self.quiet_seconds:
            return "complete"
        return None


class CompletionMonitor:
    """Background thread that completes due studies and drains the queue outbox.

    Parameters
    ----------
    tracker : StudyTracker
        Database-backed implementation supplied by the application.
    interval : float
        Seconds between passes.
    """

    def __init__(self, tracker: StudyTracker, interval: float = 1.0) -> None:
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> tuple[int, int]:
        """One pass: complete due studies, then queue complete ones. Never raises."""
        completed = queued = 0
        try:
            completed = self.tracker.complete_due_studies()
        except Exception:
            logger.exception("study completion pass failed; retrying in %.1f s", self.interval)
        try:
            queued = self.tracker.dispatch_complete_studies()
        except Exception:
            logger.exception("queue dispatch pass failed; retrying in %.1f s", self.interval)
        try:
            self.tracker.sweep_stuck_studies()
        except Exception:
            logger.exception("stuck-study sweep failed; retrying in %.1f s", self.interval)
        return completed, queued

    def _run(self) -> None:
        # The first pass at once: a restarted node completes and queues what became due while
        # it was down without waiting an interval, and the pass that first uses each of its
        # database statements (about 20 ms on SQLite) runs before associations arrive.
        while True:
            self.run_once()
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="completion-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
