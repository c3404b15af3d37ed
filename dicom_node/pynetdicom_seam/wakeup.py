"""A wake-up call for a thread that waits in ``select()`` on a socket.

pynetdicom's DUL thread sleeps 1 ms whenever it has nothing to do and then looks at its socket
and queues again; four idle associations cost the listener 0.74 s of CPU every 5 s (measured
with 4 associations held open), and every C-STORE response waited for the thread's next tick.
With a :class:`Wakeup` the thread blocks on the socket and this descriptor together, and the
threads that give it work (a primitive to send, an event, a stop) set it:
:func:`wait_instead_of_polling` sets that up for one association's DUL.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import threading
from collections.abc import Callable
from types import MethodType
from typing import Any

#: The longest the DUL thread waits for the peer or for work before it goes round its loop
#: (timers) again; work from other threads and the peer's bytes wake it at once.
IDLE_WAIT = 0.05


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


def wait_instead_of_polling(dul: Any, has_buffered_pdu: Callable[[], bool]) -> None:
    """Let ``dul``'s thread block until its peer sends or another thread gives it work.

    ``has_buffered_pdu`` says whether the reader holds a whole PDU that is no longer on the
    socket (the thread must not wait then). The thread makes and closes its own
    :class:`Wakeup`; the queues other threads put work on, ``kill_dul`` and ``stop_dul`` set it.
    """
    transport_event = dul._is_transport_event  # the reader's, bound to dul
    wakeup: list[Wakeup] = []  # the DUL thread's, while it runs

    def waiting_transport_event(self: Any) -> bool:
        sock = getattr(self.socket, "socket", None)
        if wakeup and sock is not None and nothing_to_do(self, sock):
            # Instead of pynetdicom's 1 ms sleep: until the peer sends or a thread gives work.
            wakeup[0].wait(sock, IDLE_WAIT)
        return bool(transport_event())

    def nothing_to_do(self: Any, sock: Any) -> bool:
        return (
            self.state_machine.current_state != "Sta13"  # closing: pynetdicom finishes at once
            and not self._kill_thread
            and self.to_provider_queue.empty()
            and self.event_queue.empty()
            and not (isinstance(sock, ssl.SSLSocket) and sock.pending())
            and not has_buffered_pdu()
        )

    def wake() -> None:
        # The DUL thread looks at its queues before it waits: only other threads need to.
        if threading.current_thread() is not dul:
            for waker in wakeup[:1]:
                waker.set()

    def waking(put: Callable[..., None]) -> Callable[..., None]:
        def put_and_wake(*args: Any, **kwargs: Any) -> None:
            put(*args, **kwargs)
            wake()

        return put_and_wake

    def kill_dul(self: Any) -> None:
        self._kill_thread = True
        wake()

    def stop_dul(self: Any) -> bool:
        # pynetdicom's spins, sleeping the loop delay, until the thread has ended.
        if self.state_machine.current_state != "Sta1":
            return False
        kill_dul(self)
        if threading.current_thread() is not self:
            self.join()
        return True

    run_reactor = dul._target  # the DUL thread's target, as pynetdicom made it

    def run_waking(*args: Any, **kwargs: Any) -> None:
        waker = Wakeup()
        wakeup.append(waker)
        try:
            run_reactor(*args, **kwargs)
        finally:
            wakeup.clear()
            waker.close()

    dul._is_transport_event = MethodType(waiting_transport_event, dul)
    dul._run_loop_delay = 0  # the loop waits in transport_event instead of sleeping
    dul._target = run_waking
    dul.kill_dul = MethodType(kill_dul, dul)
    dul.stop_dul = MethodType(stop_dul, dul)
    for work in (dul.to_provider_queue, dul.event_queue):
        work.put = waking(work.put)
