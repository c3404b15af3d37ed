"""Reading PDUs from a peer with a length limit and a deadline.

pynetdicom's reader (``DULServiceProvider._read_pdu_data``) allocates whatever length a PDU header
declares, before any AE title is checked, and blocks without a timeout until the declared bytes
arrive. :func:`install_reader` gives one association's DUL a reader that

- refuses a PDU longer than the peer may send (what we advertised for P-DATA-TF, a fixed bound
  for everything else) without reading or allocating it: the DUL then aborts (Evt19);
- receives each PDU within ``timeout`` seconds of its first byte, or closes the connection;
- takes the PDU into one buffer with ``recv_into`` (pynetdicom appends 4 KiB at a time: about
  3,700 system calls and copies for a 15 MB image);
- lets the owner look at every P-DATA-TF before it is decoded (``on_pdata``), so the listener can
  check free space as a dataset arrives;
- streams the middle of a C-STORE dataset straight into its file (:func:`_write_fragments`).

The DUL's state machine still decides what every other PDU means: association set-up, every
command, the last fragment of each dataset (which completes the DIMSE message), release and
abort. A P-DATA-TF that carries only non-final dataset fragments of the message being received
changes nothing in that machine (Sta6 + Evt10 -> DT-2 -> Sta6); pynetdicom would decode it into
PDV items, a primitive, an event and a queue entry, copy each fragment twice and write it
through the temporary file's wrapper with a flush, then sleep 1 ms in its reactor loop before
reading the next PDU. Here its fragments are written from the receive buffer into the same
file object, in order, and the next PDU is read at once while more data is waiting. Nothing
binds EVT_PDU_RECV or EVT_DATA_RECV in this node, the two events this path does not fire.

Upstream would need a maximum PDU length on receive and a read deadline in
``_read_pdu_data`` to make the first two points unnecessary.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType
from typing import Any

logger = logging.getLogger(__name__)

P_DATA_TF = 0x04
_KNOWN_TYPES = frozenset(range(0x01, 0x08))
# A-ASSOCIATE-RQ/AC carry at most 128 presentation contexts of a few UIDs each plus user
# identity: 1 MiB is far above any real one. Release and abort PDUs are 4 bytes long.
MAX_ASSOCIATION_PDU = 2**20
# With no maximum advertised (max PDU 0) a P-DATA-TF is still bounded.
MAX_UNLIMITED_PDATA = 64 * 2**20


@dataclass(frozen=True)
class PduLimits:
    """What one peer may send.

    Parameters
    ----------
    max_pdata : int
        Maximum P-DATA-TF length we advertised (the variable field); 0 means no maximum was
        advertised, and :data:`MAX_UNLIMITED_PDATA` applies.
    timeout : float
        Seconds allowed to receive one whole PDU once its first byte has arrived.
    """

    max_pdata: int
    timeout: float

    def limit(self, pdu_type: int) -> int:
        if pdu_type == P_DATA_TF:
            # pynetdicom encodes PDVs up to the peer's maximum plus their 6-byte headers.
            return (self.max_pdata or MAX_UNLIMITED_PDATA) + 6 * 16
        return MAX_ASSOCIATION_PDU


class _Inbox:
    """One association's socket, read a PDU at a time with one ``recv`` where possible.

    Each payload is received together with up to 6 bytes of what follows: the next PDU's
    header, kept in ``pending``. The rest of that next PDU is then still on the socket (or yet to
    come), so the DUL's readiness check on the socket still sees it. A peer whose next PDU is a
    bare 6-byte header (length 0, which no valid PDU has) is left to the idle timeout.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.pending = bytearray()
        self.scratch = bytearray()
        sock.settimeout(timeout)

    def fill(self, view: memoryview, minimum: int, deadline: float) -> int:
        """Receive at least ``minimum`` bytes into ``view`` (at most its length) by ``deadline``.

        Returns the bytes received (fewer than ``minimum`` if the peer closed). The first
        ``recv`` runs under the socket's own timeout (the whole ``timeout``, as the PDU has just
        started); only a PDU that needs several is timed against its deadline call by call.
        """
        got = 0
        narrowed = False
        try:
            while got < minimum:
                if got:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"{got} of {minimum} bytes")
                    self.sock.settimeout(remaining)
                    narrowed = True
                n = self.sock.recv_into(view[got:])
                if n == 0:
                    break
                got += n
        finally:
            if narrowed:
                self.sock.settimeout(self.timeout)
        return got

    def header(self, deadline: float) -> bytes | None:
        """The next 6-byte PDU header, or None if the peer closed first."""
        have = len(self.pending)
        if have < 6:
            rest = bytearray(6 - have)
            got = self.fill(memoryview(rest), 6 - have, deadline)
            self.pending += rest[:got]
            if len(self.pending) < 6:
                return None
        head, self.pending = bytes(self.pending[:6]), self.pending[6:]
        return head

    def payload(self, head: bytes, length: int, deadline: float, *, shared: bool) -> Any:
        """The whole PDU (header + ``length`` bytes), or None if the peer closed first.

        ``shared``: into the association's reusable buffer (valid until the next call), for
        P-DATA that is mostly streamed out at once; otherwise a new ``bytearray`` of its own.
        """
        size = 6 + length + 6  # room for the next header
        if shared:
            if len(self.scratch) < size:
                self.scratch = bytearray(size)  # views of the old buffer stay valid
            buffer = self.scratch
        else:
            buffer = bytearray(size)
        view = memoryview(buffer)
        view[:6] = head
        got = self.fill(view[6:size], length, deadline)
        if got < length:
            return None
        self.pending += view[6 + length : 6 + got]
        if shared:
            return view[: 6 + length]
        del view
        del buffer[6 + length :]
        return buffer

    def waiting(self, timeout: float) -> bool:
        """Is the next PDU already arriving (within ``timeout`` seconds)?"""
        return bool(self.pending) or _data_waiting(self.sock, timeout)


#: PDUs streamed in one call of the reader before it returns to the DUL's loop (8 MiB at
#: 128 KiB PDUs), so that queued primitives (an A-ABORT from stop()) go out without long delays.
_STREAM_BATCH = 64
#: How long the reader waits for the next PDU of a dataset before it returns to the DUL's loop
#: (which would otherwise sleep 1 ms before it looks at the socket again).
_NEXT_PDU_WAIT = 0.005


def _write_fragments(dul: Any, data: bytearray | memoryview) -> bool:
    """Write a P-DATA-TF straight into the C-STORE dataset file, if that is all it carries.

    True when written: every PDV is a dataset fragment, not the last, of the message whose
    command was decoded on the same presentation context, and that message is being received
    into a file. Otherwise False, and the DUL decodes the PDU as usual.
    """
    # Anything still queued for the state machine must reach the file first.
    if dul.state_machine.current_state != "Sta6" or not dul._recv_pdu.empty():
        return False
    message = getattr(dul.assoc.dimse, "message", None)
    target = getattr(message, "_data_set_file", None)
    if target is None:
        return False
    context_id = getattr(message, "context_id", None)
    spans = []
    offset, end = 6, len(data)
    while offset < end:
        if end - offset < 6:
            return False
        item_length, pdv_context, control = struct.unpack_from(">LBB", data, offset)
        stop = offset + 4 + item_length
        # A command fragment (bit 0) or the last dataset fragment (bit 1) goes to the DUL.
        if item_length < 2 or stop > end or pdv_context != context_id or control & 0x03:
            return False
        spans.append((offset + 6, stop))
        offset = stop
    out = getattr(target, "file", target)  # the buffered file under NamedTemporaryFile
    view = memoryview(data)
    for start, stop in spans:
        out.write(view[start:stop])
    return True


def _data_waiting(sock: Any, timeout: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], timeout)
    except (OSError, ValueError):
        return False
    return bool(ready)


def install_reader(
    dul: Any,
    limits: PduLimits,
    *,
    on_pdata: Callable[[Any, int], None] | None = None,
    peer: str = "?",
    stream_datasets: bool = True,
) -> None:
    """Replace ``dul``'s PDU reader with one that enforces ``limits``.

    ``on_pdata(dul, length)`` is called for each P-DATA-TF after it was read and before the DUL
    decodes it (or its fragments are streamed: ``stream_datasets``).
    """

    inbox: list[_Inbox] = []  # made on the first read, once the DUL has its socket

    def read_pdu(self: Any, box: _Inbox) -> tuple[int, bytearray | memoryview] | None:
        """One PDU, or None when an event (closed, abort) has been queued instead."""
        deadline = time.monotonic() + limits.timeout
        try:
            head = box.header(deadline)
            if head is None:
                self.event_queue.put("Evt17")  # the peer closed the connection
                return None
            pdu_type, _, length = struct.unpack(">BBL", head)
            if pdu_type not in _KNOWN_TYPES:
                logger.warning("%s sent an unknown PDU type 0x%02X; aborting", peer, pdu_type)
                self.event_queue.put("Evt19")
                return None
            if length > limits.limit(pdu_type):
                logger.warning(
                    "%s declared a %d-byte PDU of type 0x%02X (limit %d); aborting",
                    peer,
                    length,
                    pdu_type,
                    limits.limit(pdu_type),
                )
                self.event_queue.put("Evt19")
                return None
            data = box.payload(head, length, deadline, shared=pdu_type == P_DATA_TF)
            if data is None:
                self.event_queue.put("Evt17")
                return None
        except TimeoutError as exc:
            logger.warning(
                "%s did not send a whole PDU within %.0f s (%s); closing", peer, limits.timeout, exc
            )
            self.socket.close()  # queues Evt17
            return None
        except OSError:
            self.event_queue.put("Evt17")
            return None
        return pdu_type, data

    def read(self: Any) -> None:
        sock = getattr(self.socket, "socket", None)
        if sock is None:
            self.event_queue.put("Evt17")
            return
        if not inbox or inbox[0].sock is not sock:
            inbox[:] = [_Inbox(sock, limits.timeout)]
        box = inbox[0]
        for _ in range(_STREAM_BATCH):
            pdu = read_pdu(self, box)
            if pdu is None:
                return
            pdu_type, data = pdu
            if pdu_type == P_DATA_TF:
                if on_pdata is not None:
                    on_pdata(self, len(data) - 6)
                if stream_datasets and _write_fragments(self, data):
                    if self._kill_thread or not box.waiting(_NEXT_PDU_WAIT):
                        return
                    continue
            try:
                # The DUL keeps what it decodes: its own copy, not the shared buffer.
                decoded, event = self._decode_pdu(
                    bytearray(data) if isinstance(data, memoryview) else data
                )
            except Exception as exc:
                logger.warning("%s sent an undecodable PDU of type 0x%02X: %s", peer, pdu_type, exc)
                self.event_queue.put("Evt19")
                return
            self.event_queue.put(event)
            self._recv_pdu.put(decoded)
            return

    dul._read_pdu_data = MethodType(read, dul)
    # Sends to a peer that stops reading fail after the same time instead of blocking forever.
    sock = getattr(dul.socket, "socket", None)
    if sock is not None:
        sock.settimeout(limits.timeout)
