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
  check free space as a dataset arrives.

The DUL's state machine still decides what every PDU means. Upstream would need a maximum PDU
length on receive and a read deadline in ``_read_pdu_data`` to make this unnecessary.
"""

from __future__ import annotations

import logging
import socket
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


def _recv_into(sock: socket.socket, view: memoryview, deadline: float) -> int:
    """Fill ``view`` before ``deadline``; return bytes read (fewer if the peer closed)."""
    nr_read = 0
    size = len(view)
    while nr_read < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{nr_read} of {size} bytes")
        sock.settimeout(remaining)
        n = sock.recv_into(view[nr_read:], size - nr_read)
        if n == 0:
            break
        nr_read += n
    return nr_read


def install_reader(
    dul: Any,
    limits: PduLimits,
    *,
    on_pdata: Callable[[Any, int], None] | None = None,
    peer: str = "?",
) -> None:
    """Replace ``dul``'s PDU reader with one that enforces ``limits``.

    ``on_pdata(dul, length)`` is called for each P-DATA-TF after it was read and before the DUL
    decodes it.
    """

    def read(self: Any) -> None:
        wrapper = self.socket
        sock = getattr(wrapper, "socket", None)
        if sock is None:
            self.event_queue.put("Evt17")
            return
        deadline = time.monotonic() + limits.timeout
        header = bytearray(6)
        try:
            got = _recv_into(sock, memoryview(header), deadline)
            if got < 6:
                self.event_queue.put("Evt17")  # the peer closed the connection
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in _KNOWN_TYPES:
                logger.warning("%s sent an unknown PDU type 0x%02X; aborting", peer, pdu_type)
                self.event_queue.put("Evt19")
                return
            if length > limits.limit(pdu_type):
                logger.warning(
                    "%s declared a %d-byte PDU of type 0x%02X (limit %d); aborting",
                    peer,
                    length,
                    pdu_type,
                    limits.limit(pdu_type),
                )
                self.event_queue.put("Evt19")
                return
            data = bytearray(6 + length)
            data[:6] = header
            with memoryview(data) as view:
                got = _recv_into(sock, view[6:], deadline)
            if got < length:
                self.event_queue.put("Evt17")
                return
        except TimeoutError as exc:
            logger.warning(
                "%s did not send a whole PDU within %.0f s (%s); closing", peer, limits.timeout, exc
            )
            wrapper.close()  # queues Evt17
            return
        except OSError:
            self.event_queue.put("Evt17")
            return

        if pdu_type == P_DATA_TF and on_pdata is not None:
            on_pdata(self, length)
        try:
            pdu, event = self._decode_pdu(data)
        except Exception as exc:
            logger.warning("%s sent an undecodable PDU of type 0x%02X: %s", peer, pdu_type, exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    dul._read_pdu_data = MethodType(read, dul)
    # Sends to a peer that stops reading fail after the same time instead of blocking forever.
    sock = getattr(dul.socket, "socket", None)
    if sock is not None:
        sock.settimeout(limits.timeout)
