"""The streaming receive path (dicom_node.pynetdicom_seam.pdu_reader): fragments spliced from
the socket into the dataset file, the buffered path beside it, what happens when either is cut
short, and the descriptors the reader holds (splice pipes, the DUL thread's wake-up).

Every test runs a real node on 127.0.0.1; the raw peer sends PDUs split at awkward places so
that heads and fragments arrive in pieces. Loops are bounded in count and time.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.pynetdicom_seam import pdu_reader
from dicom_node.pynetdicom_seam.wakeup import Wakeup
from dicom_node.statuses import OUT_OF_RESOURCES, SUCCESS
from tests import factories
from tests.helpers import rows, send, wait_for
from tests.rawdicom import (
    A_ASSOCIATE_AC,
    RawPeer,
    dimse_response_status,
    pdata,
    store_rq,
)
from worker.db.models import Instance


def _spooled(node: Any) -> list[Path]:
    return sorted(node.listener.spool.studies.rglob("*.dcm"))


def _incoming(node: Any) -> list[Path]:
    return list(node.listener.spool.incoming.iterdir())


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes each splice moved from a socket into a pipe (the real call, counted)."""
    moved: list[int] = []
    fill = pdu_reader._Pipe.fill

    def counting(self: pdu_reader._Pipe, sock_fd: int, count: int) -> int:
        got = fill(self, sock_fd, count)
        moved.append(got)
        return got

    monkeypatch.setattr(pdu_reader._Pipe, "fill", counting)
    return moved


def _pdvs(pdus: list[bytes]) -> Iterator[tuple[int, int, bytes]]:
    """The (context, control, data) of every PDV in these P-DATA-TF PDUs."""
    for raw in pdus:
        at = 6
        while at < len(raw):
            length, context, control = struct.unpack_from(">LBB", raw, at)
            yield context, control, raw[at + 6 : at + 4 + length]
            at += 4 + length


def _regrouped(pdus: list[bytes]) -> list[bytes]:
    """The same message, with every third PDU carrying two PDVs (the buffered path's case)."""
    pdvs = list(_pdvs(pdus))
    out, i = [], 0
    while i < len(pdvs):
        take = 2 if i % 3 == 1 and i + 1 < len(pdvs) else 1
        out.append(pdata(*pdvs[i : i + take]))
        i += take
    return out


def _dribble(peer: RawPeer, data: bytes) -> None:
    """Send in pieces that cut PDU heads and fragments apart (bounded: a few hundred sends)."""
    sizes = [5, 7, 3000, 1, 11, 40000, 12, 65536]
    at = i = 0
    while at < len(data):
        peer.send(data[at : at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1


def _stored_equal(node: Any, sent: Dataset) -> None:
    (path,) = [p for p in _spooled(node) if dcmread(p).SOPInstanceUID == sent.SOPInstanceUID]
    back = dcmread(path)
    assert back.PixelData == sent.PixelData
    assert [e.tag for e in back] == [e.tag for e in sent]


def test_fragments_are_spliced_into_the_file_byte_for_byte(start_node, spliced) -> None:
    node = start_node(max_pdu=16384)
    sent = [factories.radiograph(rows=1000, columns=1200, bits=16) for _ in range(2)]  # 2.4 MB
    assert [r.status for r in send(node, sent).results] == [SUCCESS, SUCCESS]
    for ds in sent:
        _stored_equal(node, ds)
    # All but the first and last fragment of each dataset went through the pipe.
    assert sum(spliced) > 0.95 * sum(len(ds.PixelData) for ds in sent)


def test_spliced_and_buffered_pdus_mixed_and_cut_arrive_in_order(start_node, spliced) -> None:
    node = start_node()
    ds = factories.radiograph(rows=600, columns=700, bits=16)  # 840 kB in 16 KiB PDUs
    stream = b"".join(_regrouped(store_rq(ds)))
    with RawPeer(node.listener.port) as peer:
        peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        _dribble(peer, stream)
        assert dimse_response_status(peer.receive()) == SUCCESS
    _stored_equal(node, ds)
    assert spliced, "no fragment took the splice path"


def test_a_fragment_cut_off_mid_splice_times_out_and_leaves_no_file(start_node, spliced) -> None:
    node = start_node(pdu_timeout=1.0)
    pdus = store_rq(factories.radiograph(rows=512, columns=512, bits=16))
    with RawPeer(node.listener.port) as peer:
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        for data in pdus[:6]:
            peer.send(data)
        peer.send(pdus[6][: len(pdus[6]) // 2])  # a head and half a fragment, then silence
        assert peer.closed_by_node(10)
    wait_for(lambda: node.listener.open_connections == 0, timeout=5)
    assert spliced
    assert _incoming(node) == []
    assert rows(node.engine, Instance) == []


def test_a_peer_closing_mid_fragment_leaves_no_file(start_node, spliced) -> None:
    node = start_node()
    pdus = store_rq(factories.radiograph(rows=512, columns=512, bits=16))
    with RawPeer(node.listener.port) as peer:
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        for data in pdus[:6]:
            peer.send(data)
        peer.send(pdus[6][: len(pdus[6]) // 2])
        wait_for(lambda: spliced, timeout=5)
    wait_for(lambda: node.listener.open_connections == 0, timeout=5)
    wait_for(lambda: not _incoming(node), timeout=5)
    assert rows(node.engine, Instance) == []


@pytest.fixture
def file_size_limit() -> Iterator[Any]:
    """Make writes past ``limit`` bytes of any file fail (EFBIG), as a full disk would."""
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, saved[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    signal.signal(signal.SIGXFSZ, handler)


def test_a_dataset_that_cannot_be_written_is_refused_and_the_association_goes_on(
    start_node, spliced, file_size_limit
) -> None:
    node = start_node(max_pdu=16384)
    big = factories.radiograph(rows=1500, columns=1500, bits=16)  # 4.5 MB
    small = factories.radiograph(rows=64, columns=64)
    file_size_limit(2 * 2**20)
    try:
        statuses = [r.status for r in send(node, [big, small]).results]
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    assert statuses == [OUT_OF_RESOURCES, SUCCESS]
    assert [i.sop_instance_uid for i in rows(node.engine, Instance)] == [small.SOPInstanceUID]
    assert _incoming(node) == []


def test_without_a_pipe_the_buffered_path_receives(start_node, monkeypatch) -> None:
    """Out of file descriptors for a pipe (EMFILE): the dataset arrives through the buffer."""

    def no_pipe(self: pdu_reader._Pipe) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    node = start_node(max_pdu=16384)
    # The reader's pipe only: the process's other descriptors (sockets, files) are still made.
    monkeypatch.setattr(pdu_reader._Pipe, "__init__", no_pipe)
    ds = factories.radiograph(rows=600, columns=700, bits=16)
    assert [r.status for r in send(node, [ds]).results] == [SUCCESS]
    _stored_equal(node, ds)


def test_a_file_system_that_refuses_splice_gets_the_fragments_written(
    start_node, spliced, monkeypatch
) -> None:
    """Splicing out of the pipe into the file fails with EINVAL (some file systems take no
    splice): the pipe is emptied by read and write instead, in order."""
    splice = os.splice
    refused: list[int] = []

    def no_splice_into_files(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        if stat.S_ISREG(os.fstat(dst).st_mode):
            refused.append(count)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return splice(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", no_splice_into_files)
    node = start_node(max_pdu=16384)
    sent = [factories.radiograph(rows=700, columns=800, bits=16) for _ in range(2)]  # 2.2 MB
    assert [r.status for r in send(node, sent).results] == [SUCCESS, SUCCESS]
    for ds in sent:
        _stored_equal(node, ds)
    assert spliced and refused  # into the pipe by splice, out of it by read and write


def _open_fds() -> int:
    """Pipes, eventfds and sockets this process holds (the database pool's files aside)."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        held += target.startswith(("pipe:", "anon_inode:[eventfd]", "socket:"))
    return held


def test_associations_leave_no_descriptor_behind(start_node) -> None:
    """Each association's wake-up descriptor and splice pipes are closed when it ends, whether
    it is released, aborted or cut off mid-dataset."""
    node = start_node(max_pdu=16384)
    ds = factories.radiograph(rows=300, columns=300, bits=16)
    assert [r.status for r in send(node, [ds]).results] == [SUCCESS]  # warm: lazy imports
    wait_for(lambda: node.listener.open_connections == 0, timeout=5)
    before = _open_fds()
    pdus = store_rq(factories.radiograph(rows=256, columns=256, bits=16))
    for n in range(10):
        assert [r.status for r in send(node, [ds]).results] == [SUCCESS]
        with RawPeer(node.listener.port) as peer:
            assert peer.associate().pdu_type == A_ASSOCIATE_AC
            for data in pdus[:3]:
                peer.send(data)
            if n % 2:
                peer.send(pdata((3, 0x00, b"x" * 100))[:60])  # and hang up mid-fragment
    wait_for(lambda: node.listener.open_connections == 0, timeout=10)
    assert wait_for(lambda: _open_fds() <= before, timeout=5)


def test_a_wakeup_wakes_a_waiter_and_does_nothing_once_closed() -> None:
    waker = Wakeup()
    left, right = socket.socketpair()
    try:
        done = threading.Event()

        def wait() -> None:
            waker.wait(left, 30)
            done.set()

        thread = threading.Thread(target=wait)
        thread.start()
        waker.set()
        thread.join(5)
        assert done.is_set()
        read_end = waker._read
        assert read_end is not None
        # A set that was waited for is cleared: the next wait would not return at once.
        assert select.select([read_end], [], [], 0)[0] == []
        waker.close()
        assert waker._read is None and waker._write is None
        waker.set()  # after close: does nothing, writes nowhere
        waker.wait(left, 0)
    finally:
        left.close()
        right.close()
