"""A wake-up call for a thread that waits in ``select()`` on a socket.

pynetdicom's DUL thread sleeps 1 ms whenever it has nothing to do and then looks at its socket
and queues again; four idle associations cost the listener 0.74 s of CPU every 5 s (measured
with 4 associations held open), and every C-STORE response waited for the thread's next tick.
With a :class:`Wakeup` the thread blocks on the socket and this descriptor together, and the
threads that give it work (a primitive to send, an event, a stop) set it.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from typing import Any


class Wakeup:
    """An eventfd (a pipe where there is none) that other threads set to wake the waiter.

    Only the waiting thread closes it; :meth:`set` after :meth:`close` does nothing (the lock
    keeps a late ``set`` from writing into a descriptor number the process has reused).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: int | None
        self._write: int | None
        if hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._read = self._write = fd
        else:
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)

    def set(self) -> None:
        with self._lock:
            if self._write is None:
                return
            with contextlib.suppress(BlockingIOError):  # already set, many times over
                os.write(self._write, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def wait(self, sock: Any, timeout: float) -> None:
        """Until ``sock`` is readable (or closed), :meth:`set` is called, or ``timeout``."""
        fd = self._read
        if fd is None:
            return
        try:
            ready, _, _ = select.select([sock, fd], [], [], timeout)
        except (OSError, ValueError):  # the socket was closed meanwhile
            return
        if fd in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 4096)

    def close(self) -> None:
        with self._lock:
            for fd in {self._read, self._write} - {None}:
                assert fd is not None
                os.close(fd)
            self._read = self._write = None
