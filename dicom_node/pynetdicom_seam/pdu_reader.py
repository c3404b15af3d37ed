"""Reading PDUs from a peer with a length limit and a deadline.

pynetdicom's reader (``DULServiceProvider._read_pdu_data``) allocates whatever length a PDU header
declares, before any AE title is checked, and blocks without a timeout until the declared bytes
arrive. :class:`PduReader` (installed by :func:`install_reader`) gives one association's DUL
a reader that

- refuses a PDU longer than the peer may send (what we advertised for P-DATA-TF, a fixed bound
  for everything else) without reading or allocating it: the DUL then aborts (Evt19);
- receives each PDU within ``timeout`` seconds of its first byte, or closes the connection;
- receives into one buffer per association (pynetdicom appends 4 KiB at a time: about 3,700
  system calls and copies for a 15 MB image): on a plain socket exactly the PDU at hand, over
  TLS up to 1 MiB per ``recv_into``;
- lets the owner look at P-DATA-TF bytes before they are handed on (``on_pdata``), so the
  listener can check free space as a dataset arrives;
- streams the middle of a C-STORE dataset into its file without it passing through Python:
  on a plain TCP socket only each PDU's 12-byte head is read, and its fragment is moved from
  the socket into a pipe and from the pipe into the file by ``splice(2)`` (:class:`_Pipe`,
  :func:`_spliceable`); elsewhere (TLS) the fragments of every PDU that arrived together are
  gathered from the buffer into one page-aligned area and written with one ``write``
  (:func:`_fragment_spans`, :meth:`_Inbox.gather`, :func:`_append`).

The DUL's state machine still decides what every other PDU means: association set-up, every
command, the last fragment of each dataset (which completes the DIMSE message), release and
abort. A P-DATA-TF that carries only non-final dataset fragments of the message being received
changes nothing in that machine (Sta6 + Evt10 -> DT-2 -> Sta6); pynetdicom would decode it into
PDV items, a primitive, an event and a queue entry, copy each fragment twice and write it
through the temporary file's wrapper with a flush, then sleep 1 ms in its reactor loop before
reading the next PDU. Here its fragments are spliced or gathered into the same file, in order,
and the socket is read again at once while more data is waiting. A PDU the DUL must see is
copied out and queued with its event, after everything before it has been written; what
follows it waits (on the socket, or over TLS in the buffer) until the DUL has acted on it (a
C-STORE command opens the file its fragments then stream into). A write into that file that
fails (a full disk) drops the rest of the dataset, so that its C-STORE is answered 0xA700 and
the association goes on. Nothing binds EVT_PDU_RECV or EVT_DATA_RECV in this node, the two
events this path does not fire.

Upstream would need a maximum PDU length on receive and a read deadline in
``_read_pdu_data`` to make the first two points unnecessary.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dicom_node.pynetdicom_seam.incoming import stop_receiving
from dicom_node.pynetdicom_seam.wakeup import wait_instead_of_polling

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

    def refusal(self, pdu_type: int, length: int) -> str | None:
        """Why a PDU with this header is refused unread, or None."""
        if pdu_type not in _KNOWN_TYPES:
            return f"an unknown PDU type 0x{pdu_type:02X}"
        if length > self.limit(pdu_type):
            return f"a {length}-byte PDU of type 0x{pdu_type:02X} (limit {self.limit(pdu_type)})"
        return None


#: Bytes asked of the socket per ``recv`` (several 128 KiB PDUs at once when they are waiting).
_CHUNK = 2**20
#: Reads of the socket in one call of the reader before it returns to the DUL's loop, so that
#: queued primitives (an A-ABORT from stop()) go out without long delays.
_STREAM_BATCH = 32
#: How long the reader waits for the next PDU of a dataset before it returns to the DUL's loop
#: (which would otherwise sleep 1 ms before it looks at the socket again).
_NEXT_PDU_WAIT = 0.005
#: A P-DATA-TF's bytes before its first fragment: PDU header (6), PDV length (4), presentation
#: context ID and message control header (2).
_PDV_HEAD = 12
#: Those bytes: PDU type, reserved, PDU length, PDV length, context ID, control header.
_HEAD = struct.Struct(">BBLLBB")
#: Bytes spliced in one call of the reader before it returns to the DUL's loop (as _STREAM_BATCH).
_SPLICE_BATCH = _STREAM_BATCH * _CHUNK
#: Pipe size asked for (Linux caps unprivileged pipes at /proc/sys/fs/pipe-max-size, 1 MiB).
_PIPE_SIZE = 2**20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class _Inbox:
    """One association's receive buffer: ``buf[start:end]`` holds bytes not yet consumed.

    Whole PDUs are taken from it in order. What is left after the reader returns to the DUL is
    either less than one PDU (the rest is still to come on the socket, where the DUL's readiness
    check sees it) or PDUs held back behind one the DUL has still to act on (the reader's
    ``transport_event`` hands them on next).
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        # A plain socket's descriptor, read without Python's poll() before every recv (which a
        # socket with a timeout makes) when data is already waiting. TLS must go through ssl.
        self.fd = None if isinstance(sock, ssl.SSLSocket) else sock.fileno()
        #: Fragments can be spliced from the socket (a plain one, on a system with splice).
        self.splice = self.fd is not None and hasattr(os, "splice")
        #: Room kept beyond the PDU at hand: TLS reads ahead; a socket that splices reads each
        #: PDU exactly (a zeroed MiB per association cost about 1 ms of CPU).
        self.read_ahead = 0 if self.splice else _CHUNK
        self.buf = bytearray()  # sized on the first receive
        self.start = 0
        self.end = 0
        self.partial_since = 0.0  # when the first byte of the buffered partial PDU arrived
        self.stage: mmap.mmap | None = None  # page-aligned: see gather()

    @property
    def buffered(self) -> int:
        return self.end - self.start

    def header(self) -> tuple[int, int] | None:
        """(type, length) of the PDU at ``start``, once its 6-byte header is buffered."""
        if self.end - self.start < 6:
            return None
        pdu_type, _, length = struct.unpack_from(">BBL", self.buf, self.start)
        return pdu_type, length

    def receive(self, need: int, most: int = _CHUNK) -> int:
        """One ``recv`` of at most ``most`` bytes towards ``need`` buffered bytes; returns bytes
        received (0: closed).

        Raises TimeoutError once the buffered PDU has taken ``timeout`` since its first byte.
        """
        if len(self.buf) - self.start < need + self.read_ahead:
            self.receive_room(need)
        if self.buffered == 0:
            timeout = self.timeout  # a new PDU: its clock starts with its first byte
        else:
            timeout = self.partial_since + self.timeout - time.monotonic()
            if timeout <= 0:
                raise TimeoutError(f"{self.buffered} of {need} bytes")
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
        try:
            with memoryview(self.buf) as view:
                got = self.sock.recv_into(view[self.end :], most)
        finally:
            if timeout != self.timeout:
                self.sock.settimeout(self.timeout)
        if got and self.buffered == 0:
            self.partial_since = time.monotonic()
        self.end += got
        return got

    def receive_room(self, need: int) -> None:
        """Move the partial PDU to the front of a buffer with room for ``need`` bytes and the
        read-ahead (the consumed bytes are written out already)."""
        n = self.end - self.start
        if len(self.buf) < need + self.read_ahead:
            grown = bytearray(need + self.read_ahead)
            grown[:n] = self.buf[self.start : self.end]
            self.buf = grown
        else:
            self.buf[:n] = self.buf[self.start : self.end]
        self.start, self.end = 0, n

    def receive_waiting(self, most: int) -> int | None:
        """Up to ``most`` bytes of what is already waiting on a plain socket, without waiting:
        bytes received (0: closed), or None if nothing is waiting (or the socket is TLS)."""
        if self.fd is None:
            return None
        if len(self.buf) - self.end < most:
            return None  # receive() makes room
        try:
            with memoryview(self.buf) as view:
                got = os.readv(self.fd, [view[self.end : self.end + most]])
        except (BlockingIOError, InterruptedError):
            return None
        if got and self.buffered == 0:
            self.partial_since = time.monotonic()
        self.end += got
        return got

    def keep(self, data: bytes) -> None:
        """Buffer ``data``, the start of a PDU read past the buffer, for the buffered path."""
        if self.buffered == 0:
            self.partial_since = time.monotonic()
        if len(self.buf) - self.end < len(data) + self.read_ahead:
            self.receive_room(len(data))
        self.buf[self.end : self.end + len(data)] = data
        self.end += len(data)

    def take(self, length: int) -> tuple[int, int]:
        """Consume the PDU of ``length`` bytes (header included) at ``start``: its span."""
        span = (self.start, self.start + length)
        self.start += length
        if self.start == self.end:
            self.start = self.end = 0
        else:
            self.partial_since = time.monotonic()
        return span

    def gather(self, spans: list[tuple[int, int]]) -> memoryview:
        """The bytes of ``spans`` end to end, copied into a page-aligned area.

        The fragments start 12 bytes into each PDU. The kernel's copy into the page cache from
        such a source took several times the CPU of one from an aligned one while four
        associations were received at once (perf: its share of samples fell from about 40%
        to 10%), far more than this copy costs.
        """
        total = sum(b - a for a, b in spans)
        if self.stage is None or len(self.stage) < total:
            if self.stage is not None:
                self.stage.close()
            self.stage = mmap.mmap(-1, total + _CHUNK)
        at = 0
        with memoryview(self.buf) as view:
            for a, b in spans:
                self.stage[at : at + b - a] = view[a:b]
                at += b - a
        return memoryview(self.stage)[:total]

    def waiting(self, timeout: float) -> bool:
        """Is more of the peer's data here or arriving (within ``timeout`` seconds)?"""
        return self.buffered > 0 or _data_waiting(self.sock, timeout)


def _receiving_into_file(dul: Any) -> int | None:
    """The presentation context of the message being received into a file, if the fragments
    of its dataset may bypass the state machine: it is in Sta6 with nothing queued."""
    if dul.state_machine.current_state != "Sta6" or not dul._recv_pdu.empty():
        return None
    message = getattr(dul.assoc.dimse, "message", None)
    if getattr(message, "_data_set_file", None) is None:
        return None
    context_id = getattr(message, "context_id", None)
    return context_id if isinstance(context_id, int) else None


def _spliceable(head: bytes, context_id: int, max_length: int) -> int:
    """The length of the P-DATA-TF whose first :data:`_PDV_HEAD` bytes are ``head``, if it can
    be spliced; else 0.

    It can when it is no longer than ``max_length`` and its one PDV is a dataset fragment, not
    the last, on ``context_id``, the context of the message being received into a file
    (:func:`_receiving_into_file`). A PDU of several PDVs takes the buffered path.
    """
    pdu_type, _, length, item_length, pdv_context, control = _HEAD.unpack(head)
    if (
        pdu_type == P_DATA_TF
        and length <= max_length
        and item_length + 4 == length
        and item_length >= 2
        and not control & 0x03
        and pdv_context == context_id
    ):
        return int(length)
    return 0


class _Pipe:
    """A pipe that dataset fragments pass through from the socket to their file, by ``splice``.

    The bytes never enter this process: the kernel moves the socket's pages into the pipe and
    copies them once into the file, where a ``recv`` and a ``write`` copy them twice and the
    gather a third time. Made for one run of streamed PDUs and closed after it.
    """

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_CLOEXEC)
        # Refused, the default (64 KiB) holds less per splice and works the same.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.write_end, _F_SETPIPE_SZ, _PIPE_SIZE)
        self.capacity = fcntl.fcntl(self.write_end, _F_GETPIPE_SZ)
        self.held = 0  # bytes in the pipe, not yet in the file

    def fill(self, sock_fd: int, count: int) -> int:
        """Move up to ``count`` bytes from the socket into the pipe; 0 if the peer closed.

        Raises BlockingIOError when nothing is waiting on the socket or the pipe is full.
        """
        moved = os.splice(sock_fd, self.write_end, count, flags=os.SPLICE_F_NONBLOCK)
        self.held += moved
        return moved

    def drain(self, target: Any) -> None:
        """Everything in the pipe into the dataset file (or a PartialDataset, which drops it)."""
        out = getattr(target, "file", target)  # the buffered file under NamedTemporaryFile
        try:
            fd = out.fileno()
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            out.flush()  # pynetdicom's buffered file meta header goes first
            try:
                while self.held:
                    self.held -= os.splice(self.read_end, fd, self.held)
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                # A file system that takes no splice: the rest by read and write.
        while self.held:
            data = os.read(self.read_end, min(self.held, _CHUNK))
            self.held -= len(data)
            if fd is None:
                out.write(data)
            else:
                _append(target, memoryview(data))

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


def _fragment_spans(dul: Any, buf: bytearray, start: int, stop: int) -> list[tuple[int, int]]:
    """Where the dataset bytes of the P-DATA-TF in ``buf[start:stop]`` are, if it can stream.

    It can when every PDV is a dataset fragment, not the last, of the message whose command
    was decoded on the same presentation context, that message is being received into a file,
    and nothing is still queued for the state machine. Otherwise [] and the DUL decodes it.
    """
    context_id = _receiving_into_file(dul)
    if context_id is None:
        return []
    spans = []
    offset = start + 6
    while offset < stop:
        if stop - offset < 6:
            return []
        item_length, pdv_context, control = struct.unpack_from(">LBB", buf, offset)
        end = offset + 4 + item_length
        # A command fragment (bit 0) or the last dataset fragment (bit 1) goes to the DUL.
        if item_length < 2 or end > stop or pdv_context != context_id or control & 0x03:
            return []
        spans.append((offset + 6, end))
        offset = end
    return spans


def _append(target: Any, data: memoryview) -> None:
    """Append gathered dataset bytes to the message's dataset file, in one system call."""
    if target is None:  # cannot happen: the spans were taken for a message with a file
        raise RuntimeError("streamed dataset fragments without a dataset file")
    out = getattr(target, "file", target)  # the buffered file under NamedTemporaryFile
    try:
        fd = out.fileno()
    except (AttributeError, OSError):  # a PartialDataset: discards what it is given
        out.write(data)
        return
    out.flush()  # pynetdicom's buffered file meta header goes first
    rest = data
    while rest:  # a short write: the rest, in order
        rest = rest[os.write(fd, rest) :]


def _dataset_file(dul: Any) -> Any:
    """The file the message being received writes its dataset into (None: cannot happen once
    its fragments were found to stream)."""
    return getattr(getattr(dul.assoc.dimse, "message", None), "_data_set_file", None)


def _data_waiting(sock: Any, timeout: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], timeout)
    except (OSError, ValueError):
        return False
    return bool(ready)


class PduReader:
    """One association's PDU reader, in place of its DUL's ``_read_pdu_data``.

    :meth:`install` swaps it in. The DUL thread then calls :meth:`read` when the socket is
    readable (or :meth:`transport_event` finds PDUs buffered here), and waits for its peer or
    for work instead of polling (:mod:`dicom_node.pynetdicom_seam.wakeup`).

    ``on_pdata(dul, length)`` is called before P-DATA-TF bytes are handed on: for each PDU the
    DUL decodes, and for each run of streamed PDUs before it is written.
    """

    def __init__(
        self,
        dul: Any,
        limits: PduLimits,
        *,
        on_pdata: Callable[[Any, int], None] | None = None,
        peer: str = "?",
    ) -> None:
        self.dul = dul
        self.limits = limits
        self.on_pdata = on_pdata
        self.peer = peer
        self.box: _Inbox | None = None  # made on the first read, once the DUL has its socket
        self._their_transport_event = dul._is_transport_event

    def install(self) -> None:
        dul = self.dul
        dul._read_pdu_data = self.read
        dul._is_transport_event = self.transport_event
        wait_instead_of_polling(dul, self.has_buffered_pdu)
        # Sends to a peer that stops reading fail after the same time instead of blocking.
        sock = getattr(dul.socket, "socket", None)
        if sock is not None:
            sock.settimeout(self.limits.timeout)

    # -- what the DUL calls ---------------------------------------------------------------------
    def read(self) -> None:
        """Receive what the peer sent: stream dataset fragments, queue every other PDU."""
        dul = self.dul
        sock = getattr(dul.socket, "socket", None)
        if sock is None:
            dul.event_queue.put("Evt17")
            return
        if self.box is None or self.box.sock is not sock:
            self.box = _Inbox(sock, self.limits.timeout)
        box = self.box
        if not dul._recv_pdu.empty():
            # Let the DUL act on what is queued first (a command opens the file its fragments
            # stream into): reading on would queue the whole dataset behind it. What is
            # buffered meanwhile is handed on by ``transport_event``; the rest waits on the
            # socket.
            return
        for _ in range(_STREAM_BATCH):
            if box.splice and not self._buffered_pdu(box):
                context_id = _receiving_into_file(dul)
                if context_id is not None and self._stream_spliced(box, context_id):
                    return
            if self._complete_pdu(box) is None or self._hand_on(box) or dul._kill_thread:
                return
            if not box.waiting(_NEXT_PDU_WAIT):
                return

    def transport_event(self) -> bool:
        """pynetdicom reads only when the socket is readable; PDUs this reader has buffered
        but not handed on yet are not on the socket any more."""
        dul = self.dul
        if (
            dul.state_machine.current_state != "Sta13"
            and dul._recv_pdu.empty()
            and self.has_buffered_pdu()
        ):
            self.read()
            return True
        return bool(self._their_transport_event())

    def has_buffered_pdu(self) -> bool:
        return self.box is not None and self._buffered_pdu(self.box)

    # -- the buffered path ----------------------------------------------------------------------
    def _buffered_pdu(self, box: _Inbox) -> bool:
        """Is a whole PDU (or a header to refuse) waiting in the buffer, not on the socket?"""
        head = box.header()
        if head is None:
            return False
        pdu_type, length = head
        return self.limits.refusal(pdu_type, length) is not None or box.buffered >= 6 + length

    def _complete_pdu(self, box: _Inbox) -> tuple[int, int] | None:
        """Receive until a whole PDU is buffered: (type, length); None if an event was queued."""
        try:
            while True:
                head = box.header()
                if head is not None:
                    pdu_type, length = head
                    refused = self.limits.refusal(pdu_type, length)
                    if refused is not None:
                        logger.warning("%s sent %s; aborting", self.peer, refused)
                        self.dul.event_queue.put("Evt19")
                        return None
                    if box.buffered >= 6 + length:
                        return head
                    need = 6 + length
                else:
                    need = 6
                # On a plain socket no more than this PDU: what follows a C-STORE command is
                # spliced once the command has opened its file. TLS reads ahead.
                most = need - box.buffered if box.splice else _CHUNK
                if box.receive(need, most=most) == 0:
                    self.dul.event_queue.put("Evt17")  # the peer closed the connection
                    return None
        except OSError as exc:  # TimeoutError included
            self._connection_lost(exc)
            return None

    def _connection_lost(self, exc: OSError) -> None:
        """A PDU not received in time closes the connection; any other error means it closed."""
        if isinstance(exc, TimeoutError):
            logger.warning(
                "%s did not send a whole PDU within %.0f s (%s); closing",
                self.peer,
                self.limits.timeout,
                exc,
            )
            self.dul.socket.close()  # queues Evt17
        else:
            self.dul.event_queue.put("Evt17")

    def _hand_on(self, box: _Inbox) -> bool:
        """Stream or queue every whole PDU buffered, in order; True if the DUL has work."""
        dul = self.dul
        spans: list[tuple[int, int]] = []
        streamed = 0

        def flush() -> None:
            nonlocal streamed
            if spans:
                self._announce(streamed)
                # Checked when the spans were taken; on_pdata may have swapped in a discard.
                with box.gather(spans) as data:
                    self._write(data)
                spans.clear()
                streamed = 0

        queued = False
        while True:
            head = box.header()
            if head is None or box.buffered < 6 + head[1]:
                break
            pdu_type, length = head
            start, stop = box.take(6 + length)
            if pdu_type == P_DATA_TF:
                mine = _fragment_spans(dul, box.buf, start, stop)
                if mine:
                    spans.extend(mine)
                    streamed += length
                    continue
            flush()  # what came before goes first
            if pdu_type == P_DATA_TF:
                self._announce(length)
            try:
                # The DUL keeps what it decodes: a copy, not the shared buffer.
                decoded, event = dul._decode_pdu(box.buf[start:stop])
            except Exception as exc:
                logger.warning(
                    "%s sent an undecodable PDU of type 0x%02X: %s", self.peer, pdu_type, exc
                )
                dul.event_queue.put("Evt19")
                return True
            dul.event_queue.put(event)
            dul._recv_pdu.put(decoded)
            # Leave the rest buffered until the DUL has acted on it: after a C-STORE command,
            # the fragments that came with it stream once the command has opened its file.
            # (``transport_event`` brings the DUL back here for them.)
            queued = True
            break
        flush()
        return queued

    # -- the spliced path -----------------------------------------------------------------------
    def _stream_spliced(self, box: _Inbox, context_id: int) -> bool:
        """Splice the fragments of the PDUs that can stream, while they keep coming.

        ``context_id`` is the context of the message being received: only this thread changes
        the state that decides it, so it holds for the whole run. This loop runs once per PDU
        (about 115 times for a 15 MB image): a whole head read from the socket is looked at as
        it came, without going through the buffer.

        Returns True when the reader is done for now (nothing more waiting, or the connection
        is closed), False when the buffer holds the start of a PDU for the buffered path.
        """
        fd = box.fd
        if fd is None:  # cannot happen: only a plain socket's inbox can splice
            return False
        try:
            pipe = _Pipe()
        except OSError as exc:  # out of file descriptors: the buffered path needs none
            logger.debug(
                "%s: no pipe to splice through (%s); reading into the buffer", self.peer, exc
            )
            return False
        max_length = self.limits.limit(P_DATA_TF)
        spliced = 0
        try:
            while spliced < _SPLICE_BATCH and not self.dul._kill_thread:
                head = None
                if not box.buffered:
                    try:
                        head = os.read(fd, _PDV_HEAD)
                    except BlockingIOError:
                        if not box.waiting(_NEXT_PDU_WAIT):
                            return True  # back to the DUL's loop until the peer sends more
                        continue
                    if not head:
                        self.dul.event_queue.put("Evt17")  # the peer closed the connection
                        return True
                    deadline = time.monotonic() + self.limits.timeout
                    if len(head) < _PDV_HEAD:
                        box.keep(head)
                        head = None
                if head is None:
                    # A head cut short, or part of a fragment buffered: through the buffer.
                    head = self._buffered_head(box)
                    if head is None:
                        return True
                    deadline = box.partial_since + self.limits.timeout
                length = _spliceable(head, context_id, max_length)
                if not length or box.buffered >= 6 + length:
                    if not box.buffered:
                        box.keep(head)
                    return False
                rest = 6 + length - _PDV_HEAD
                if box.buffered > _PDV_HEAD:  # part of the fragment came with a buffered run
                    self._drain(pipe)
                    self._announce(box.buffered - _PDV_HEAD)
                    with memoryview(box.buf) as view:
                        part = view[box.start + _PDV_HEAD : box.end]
                        self._write(part)
                        part.release()
                    rest -= box.buffered - _PDV_HEAD
                if box.buffered:
                    box.take(box.buffered)  # the head (and part) are consumed: the buffer is empty
                self._splice_payload(box, fd, pipe, rest, deadline)
                spliced += 6 + length
            return True
        except OSError as exc:  # TimeoutError and ConnectionError included
            self._connection_lost(exc)
            return True
        finally:
            try:
                self._drain(pipe)  # what was spliced is in the file before anything else runs
            finally:
                pipe.close()

    def _buffered_head(self, box: _Inbox) -> bytes | None:
        """Complete the buffered head of the next PDU from the socket: its first
        :data:`_PDV_HEAD` bytes; None if nothing more is coming for now or the peer closed."""
        while box.buffered < _PDV_HEAD:  # the next PDU's head, and no more
            most = _PDV_HEAD - box.buffered
            got = box.receive_waiting(most)
            if got is None:
                if not box.buffered and not box.waiting(_NEXT_PDU_WAIT):
                    return None
                got = box.receive(_PDV_HEAD, most=most)
            if got == 0:
                self.dul.event_queue.put("Evt17")  # the peer closed the connection
                return None
        return bytes(box.buf[box.start : box.start + _PDV_HEAD])

    def _splice_payload(
        self, box: _Inbox, fd: int, pipe: _Pipe, count: int, deadline: float
    ) -> None:
        """Move the next ``count`` bytes on ``box``'s socket ``fd``, one PDU's fragment, into the
        pipe, draining it into the file whenever it is full. Raises TimeoutError past
        ``deadline`` and ConnectionError if the peer closes first."""
        while count:
            room = pipe.capacity - pipe.held
            if room <= 0:
                self._drain(pipe)
                continue
            try:
                moved = pipe.fill(fd, count if count < room else room)
            except BlockingIOError:  # nothing waiting, or the pipe's slots are used up
                if pipe.held:
                    self._drain(pipe)  # into the file while the peer's bytes are on their way
                elif (
                    not _data_waiting(box.sock, deadline - time.monotonic())
                    and time.monotonic() >= deadline
                ):
                    raise TimeoutError(f"{count} bytes of a fragment missing") from None
                continue
            if moved == 0:
                raise ConnectionError("the peer closed the connection mid-PDU")
            count -= moved

    # -- into the dataset file ------------------------------------------------------------------
    def _announce(self, length: int) -> None:
        if self.on_pdata is not None:
            self.on_pdata(self.dul, length)

    def _drain(self, pipe: _Pipe) -> None:
        if not pipe.held:
            return
        self._announce(pipe.held)
        try:
            # Looked up after on_pdata, which may have swapped in a discard.
            pipe.drain(_dataset_file(self.dul))
        except OSError as exc:
            self._discard_unwritable(exc)
            pipe.drain(_dataset_file(self.dul))  # dropped

    def _write(self, data: memoryview) -> None:
        try:
            _append(_dataset_file(self.dul), data)
        except OSError as exc:
            self._discard_unwritable(exc)

    def _discard_unwritable(self, exc: OSError) -> None:
        """The dataset file cannot be written (a full disk): drop the rest of the dataset, so
        that its C-STORE is answered 0xA700 instead of the association being aborted."""
        logger.warning(
            "%s: writing a dataset into incoming/ failed (%s); dropping it", self.peer, exc
        )
        stop_receiving(self.dul, f"writing the dataset failed: {exc.strerror or exc}")


def install_reader(
    dul: Any,
    limits: PduLimits,
    *,
    on_pdata: Callable[[Any, int], None] | None = None,
    peer: str = "?",
) -> PduReader:
    """Replace ``dul``'s PDU reader with a :class:`PduReader` that enforces ``limits``."""
    reader = PduReader(dul, limits, on_pdata=on_pdata, peer=peer)
    reader.install()
    return reader
