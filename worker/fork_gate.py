"""Keep a process's helper threads out of shared library state while it forks.

kombu's ``cached_property`` (behind ``Celery.loader``, ``.amqp``, ``.log``, ``.tasks``) takes one
lock per property *per class*, shared by every instance, on each access. If a thread of the
worker's main process (its ``/readyz`` server opens a broker connection) holds such a lock at
the moment billiard forks a pool process, the child inherits the lock held by a thread that does
not exist there, and hangs on ``app.loader`` before it warms up: ``/readyz`` then never says
ready (seen once in CI). Work that touches that state runs inside the gate; a fork waits until
no such work is in progress, and none starts until the fork is done.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

# A fork waits at most this long for the gate, so a mistake elsewhere cannot wedge the pool.
FORK_WAIT_SECONDS = 30.0


class ForkGate:
    """A lock that every ``os.fork()`` of this process takes for the duration of the fork."""

    def __init__(self, fork_wait: float = FORK_WAIT_SECONDS) -> None:
        self._lock = threading.Lock()
        self._fork_wait = fork_wait
        self._held_for_fork = False
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork,
            after_in_child=self._after_fork,
        )

    def _before_fork(self) -> None:
        self._held_for_fork = self._lock.acquire(timeout=self._fork_wait)

    def _after_fork(self) -> None:
        # In the child the lock was taken by the forking thread, which is this one there too.
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()

    def __enter__(self) -> ForkGate:
        self._lock.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()
