"""The association server: one thread per connection, which owns that connection to its end.

pynetdicom's ``ThreadedAssociationServer`` hands each socket to an Association thread and forgets
it. Three things then go wrong with a hostile or buggy peer:

- the TLS handshake runs in the accept loop without a timeout, so one silent client stalls
  everyone (here it runs in the connection's thread, bounded by ``handshake_timeout``);
- an exception in the DUL's state machine (a garbage command set, an unnegotiated presentation
  context ID) kills the DUL thread without sending an A-ABORT or closing the socket, and no
  ``EVT_CONN_CLOSE`` ever fires (here the exception becomes an A-ABORT and a close);
- every connection, associated or not, counts against ``AE.maximum_associations``, so a few
  silent connections lock out real senders (here connections have their own, larger bound and
  only associations count against the association limit).

It also lets the association thread wait for DIMSE messages instead of polling for them
(:func:`_wake_on_messages`), and sends C-STORE responses without pynetdicom's message encoding
(:mod:`dicom_node.pynetdicom_seam.store_response`).

:class:`ConnectionOwner` is what the server reports to; the listener implements it. Its
``connection_finished`` is called exactly once per admitted connection, after the association
thread has ended, whatever the way it ended.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.pynetdicom_seam.store_response import answer_stores_directly

logger = logging.getLogger(__name__)


class ConnectionOwner(Protocol):
    """Callbacks the server makes for each connection (implemented by the listener)."""

    def admit_connection(self, address: tuple[str, int]) -> bool:
        """Return False to close a new connection at once (e.g. too many are open)."""
        ...

    def handshake_failed(self, address: tuple[str, int], reason: str) -> None:
        """A TLS handshake failed or timed out."""
        ...

    def connection_opened(self, assoc: Any) -> None:
        """An Association object exists for the connection; its thread is about to start."""
        ...

    def connection_finished(self, assoc: Any | None, address: tuple[str, int]) -> None:
        """The connection is over (its association thread has ended, its socket is closed)."""
        ...


def _abort(assoc: Any) -> None:
    """Send an A-ABORT (service provider) if the socket is still open, close it, stop the DUL."""
    wrapper = assoc.dul.socket
    if wrapper is not None and wrapper.socket is not None:
        abort = A_ABORT_RQ()
        abort.source = 0x02  # service provider
        abort.reason_diagnostic = 0x00
        wrapper.send(abort.encode())
        wrapper.close()
    assoc.is_aborted = True
    assoc.is_established = False
    assoc.dul.kill_dul()


def _guard_state_machine(assoc: Any) -> None:
    """Turn an exception in the DUL's state machine into an A-ABORT and a closed socket."""
    fsm = assoc.dul.state_machine
    do_action = fsm.do_action

    def guarded(event: str) -> None:
        try:
            do_action(event)
        except Exception as exc:  # pynetdicom has already logged it and stopped the DUL
            logger.warning("protocol error from the peer (%s); aborting the association", exc)
            _abort(assoc)

    fsm.do_action = guarded


def _guard_association_thread(assoc: Any) -> None:
    """Turn an exception in the association thread into an A-ABORT instead of a traceback.

    Seen from the fuzzer: an A-ASSOCIATE-RQ whose abstract syntax pynetdicom cannot parse makes
    its negotiation raise TypeError in the acceptor thread.
    """
    target = assoc._target  # threading.Thread's target: pynetdicom's run_reactor

    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            target(*args, **kwargs)
        except Exception as exc:
            logger.warning(
                "association failed on the peer's input (%s: %s); aborting",
                type(exc).__name__,
                exc,
            )
            _abort(assoc)

    assoc._target = guarded


#: The longest the association thread waits for a DIMSE message before it goes round its loop
#: (release, abort, DUL and idle-timer checks) again; what those checks look for wakes it.
_MESSAGE_WAIT = 0.05
#: Put on the message queue to wake the association thread; read as "no message".
_NO_MESSAGE = (None, None)


def _wake_on_messages(assoc: Any) -> None:
    """Let the association thread wait for what it acts on instead of polling for it.

    pynetdicom's acceptor loop sleeps 1 ms, then looks for a message without blocking: each
    C-STORE waits for the next tick (0.5 ms on average) before its handler runs, and the idle
    thread wakes a thousand times a second. Here the look waits up to :data:`_MESSAGE_WAIT`
    on the message queue, so a complete message is served at once, and a primitive for the
    association (a release or abort from the peer) or the DUL thread ending puts
    :data:`_NO_MESSAGE` there, so the loop's other checks run at once too.
    """
    dimse = assoc.dimse
    dul = assoc.dul
    get_msg = dimse.get_msg
    to_user = dul.to_user_queue.put

    def to_user_and_wake(*args: Any, **kwargs: Any) -> None:
        to_user(*args, **kwargs)
        dimse.msg_queue.put(_NO_MESSAGE)

    dul.to_user_queue.put = to_user_and_wake
    run_dul = dul._target

    def run_dul_then_wake(*args: Any, **kwargs: Any) -> None:
        try:
            run_dul(*args, **kwargs)
        finally:
            dimse.msg_queue.put(_NO_MESSAGE)

    dul._target = run_dul_then_wake

    def get_message(block: bool = False) -> Any:
        if block:
            return get_msg(block=True)
        try:
            return dimse.msg_queue.get(timeout=_MESSAGE_WAIT)
        except queue.Empty:
            return _NO_MESSAGE

    dimse.get_msg = get_message


_STANDARD_LOGGING = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def _drop_unheard_logging(assoc: Any) -> None:
    """Unbind pynetdicom's logging handlers when its logger would drop what they write.

    They format every PDU and DIMSE message for the ``pynetdicom`` logger, which stays at
    WARNING unless the node logs at DEBUG (:func:`worker.logs.configure_logging`).
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return
    for event, handler in _STANDARD_LOGGING:
        assoc.unbind(event, handler)


def _wait(assoc: Any) -> None:
    """Wait for the association thread; wake it if the connection dies before an A-ASSOCIATE-RQ.

    The acceptor waits up to the ACSE timeout for the request even when the DUL has already
    closed the connection (garbage, a PDU that never finished): that would hold the connection
    for 30 s after the peer has gone.
    """
    while assoc.is_alive() and assoc.requestor.primitive is None:
        assoc.join(0.2)
        wrapper = assoc.dul.socket
        if wrapper is None or wrapper.socket is None or not assoc.dul.is_alive():
            assoc.dul.to_user_queue.put(None)  # read by the acceptor as "no request came"
            break
    assoc.join()  # once associated (or woken), nothing to watch: just wait for the end


class ConnectionHandler(RequestHandler):
    """Runs in the connection's own thread, from accept to close.

    Pass it to ``AE.make_server(request_handler=ConnectionHandler)`` with a
    :class:`GuardedAssociationServer`.
    """

    server: GuardedAssociationServer

    def handle(self) -> None:
        owner = self.server.owner
        address = self.client_address
        assoc = None
        try:
            if not owner.admit_connection(address):
                return
            if self.server.tls_context is not None and not self._handshake():
                return
            assoc = self._create_association()
            _guard_state_machine(assoc)
            _guard_association_thread(assoc)
            _wake_on_messages(assoc)
            _drop_unheard_logging(assoc)
            answer_stores_directly(assoc)
            owner.connection_opened(assoc)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": address})
            assoc.start()
            _wait(assoc)
        except Exception:
            logger.exception("connection from %s:%s failed", *address[:2])
        finally:
            self._close(assoc)
            owner.connection_finished(assoc, address)

    def _handshake(self) -> bool:
        ctx = self.server.tls_context
        assert ctx is not None
        raw = cast(socket.socket, self.request)
        raw.settimeout(self.server.handshake_timeout)
        try:
            self.request = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no handshake within {self.server.handshake_timeout:g} s"
            self.server.owner.handshake_failed(self.client_address, str(reason))
            return False
        return True

    def _close(self, assoc: Any | None) -> None:
        wrapper = getattr(getattr(assoc, "dul", None), "socket", None)
        if wrapper is not None and wrapper.socket is not None:
            wrapper.close()
        with contextlib.suppress(OSError):
            self.request.close()


class _SharedContexts(list[Any]):
    """The server's presentation contexts, shared by its associations instead of copied.

    pynetdicom deep-copies them for every association (17 ms of CPU for our 170 storage
    contexts with 13 transfer syntaxes each).
    Negotiation only reads them and builds new contexts for its answer, and the server never
    changes its own once it serves.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


def register_server(ae: Any, server: Any) -> None:
    """Let ``ae.shutdown()`` stop a server started in our own thread, as it stops its own.

    ``AE.start_server(block=False)`` appends to the private ``AE._servers``; we start the
    server ourselves (to name and own its thread), so we append it the same way.
    """
    ae._servers.append(server)


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the connection life cycle described above.

    Set ``owner``, ``tls_context`` and ``handshake_timeout`` on a subclass or instance before
    serving. ``ssl_context`` stays None so that pynetdicom never handshakes in the accept loop.
    """

    owner: ConnectionOwner
    tls_context: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0
    # Connection threads live as long as their association; never wait for them on close.
    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.contexts = _SharedContexts(self.contexts)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            logger.exception("connection thread failed")
            self.shutdown_request(request)
