"""When a study is complete: the rule.

A study is complete when every association that delivered its instances has ended and no new
instance arrived for ``quiet_seconds``; it is forced complete ``max_wait_seconds`` after its first
instance however busy it is. The state lives in the application's database; this module holds
only the rule, which the application's study monitor applies every second, so a restarted node
simply carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


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

    def due_at(
        self, *, open_associations: int, first_received: datetime, last_received: datetime
    ) -> datetime:
        """When :meth:`verdict` will say complete or forced if nothing more arrives and the open
        associations stay open: a monitor can sleep until then instead of polling."""
        forced = first_received + timedelta(seconds=self.max_wait_seconds)
        if open_associations:
            return forced
        return min(forced, last_received + timedelta(seconds=self.quiet_seconds))
