"""Peers that misbehave on purpose: the node stays up, serves others, keeps nothing it should not.

Every test starts a real node on 127.0.0.1 and talks to it over TCP with :mod:`tests.rawdicom`.
Loops are bounded in count and time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.addresses import Destination
from dicom_node.interfaces import PeerInfo
from dicom_node.sender import SenderOptions, echo
from dicom_node.statuses import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from dicom_node.tls import client_context
from tests import factories
from tests.certs import make_pki
from tests.helpers import dest, rows, send, wait_for
from tests.rawdicom import (
    A_ABORT,
    A_ASSOCIATE_AC,
    CR_IMAGE_STORAGE,
    RawPeer,
    command_bytes,
    dimse_response_status,
    echo_rq,
    pdata,
    pdu,
    store_command,
    store_rq,
)
from worker.db.models import Association, Instance, Rejection


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _echo_time(node) -> float:
    start = time.monotonic()
    assert echo(dest(node), SenderOptions(calling_ae="PROBE", acse_timeout=10)) == 0
    return time.monotonic() - start


def _garbage_command() -> bytes:
    return pdata((1, 0x03, b"\xde\xad\xbe\xef" * 8))


def _unnegotiated_context() -> bytes:
    (msg,) = echo_rq(context_id=99)
    return msg


@pytest.mark.parametrize("attack", [_garbage_command, _unnegotiated_context])
def test_protocol_errors_free_their_association_slot(start_node, attack) -> None:
    node = start_node(max_associations=2)
    for _ in range(4):  # twice the limit
        with RawPeer(node.listener.port) as peer:
            assert peer.associate().pdu_type == A_ASSOCIATE_AC
            peer.send(attack())
            assert peer.receive().pdu_type == A_ABORT
            assert peer.closed_by_node(5)
        wait_for(lambda: node.listener.open_associations == 0, timeout=5)
    assert echo(dest(node)) == 0
    assert rows(node.engine, Rejection) == []
    ended = wait_for(
        lambda: [a for a in rows(node.engine, Association) if a.ended_at is not None], timeout=5
    )
    assert {a.outcome for a in ended} >= {"aborted"}


def test_huge_pdu_header_is_refused_before_allocation(start_node) -> None:
    node = start_node()
    before = _rss()
    with RawPeer(node.listener.port) as peer:
        peer.send(struct.pack(">BBL", 0x01, 0, 2**30))  # an A-ASSOCIATE-RQ of 1 GiB
        assert peer.closed_by_node(5)
    with RawPeer(node.listener.port) as peer:
        # After association, a P-DATA-TF longer than the maximum we advertised.
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        peer.send(struct.pack(">BBL", 0x04, 0, node.settings.node.max_pdu + 4096))
        assert peer.receive().pdu_type == A_ABORT
    assert _rss() - before < 200 * 2**20
    assert _echo_time(node) < 5


def test_half_sent_pdu_is_timed_out(start_node) -> None:
    node = start_node(pdu_timeout=1.0)
    with RawPeer(node.listener.port) as peer:
        peer.send(struct.pack(">BBL", 0x01, 0, 500) + b"\x00\x01" + bytes(18))
        start = time.monotonic()
        assert peer.closed_by_node(10)
        assert time.monotonic() - start < 5
    with RawPeer(node.listener.port) as peer:  # the same mid-association
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        peer.send(echo_rq()[0][:20])
        assert peer.closed_by_node(10)
    wait_for(lambda: node.listener.open_connections == 0, timeout=5)


def test_held_connections_do_not_lock_out_others(start_node) -> None:
    """Default settings, 20 half-open + 20 garbage-command + 2 huge-header connections held."""
    node = start_node()
    port = node.listener.port
    held: list[RawPeer] = []
    try:
        for _ in range(20):  # connected, then a partial PDU header and silence
            peer = RawPeer(port)
            peer.send(b"\x01\x00")
            held.append(peer)
        for _ in range(20):
            peer = RawPeer(port)
            peer.associate()
            peer.send(_garbage_command())
            held.append(peer)
        for _ in range(2):
            peer = RawPeer(port)
            peer.send(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
            held.append(peer)
        for _ in range(3):
            assert _echo_time(node) < 5
        wait_for(lambda: node.listener.open_associations == 0, timeout=5)
    finally:
        for peer in held:
            peer.close()
    assert not [r for r in rows(node.engine, Rejection) if "already open" in r.reason]


def _incoming(node) -> list[Path]:
    return list(node.listener.spool.incoming.iterdir())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_aborted_transfer_leaves_no_file(start_node, how) -> None:
    node = start_node()
    ds = factories.radiograph(rows=512, columns=512, bits=16)
    pdus = store_rq(ds)
    with RawPeer(node.listener.port) as peer:
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        for data in pdus[: len(pdus) // 2]:
            peer.send(data)
        wait_for(lambda: _incoming(node), timeout=5)
        if how == "abort":
            peer.send(pdu(0x07, bytes(4)))
    wait_for(lambda: not _incoming(node), timeout=10)
    assert rows(node.engine, Instance) == []
    (assoc,) = wait_for(
        lambda: [a for a in rows(node.engine, Association) if a.ended_at], timeout=5
    )
    assert assoc.outcome == "aborted"


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")  # invalid on purpose
def test_overlong_command_uid_leaves_no_file(start_node) -> None:
    node = start_node()
    ds = factories.radiograph(rows=64, columns=64)
    pdus = store_rq(ds)
    raw = command_bytes(store_command(ds.SOPClassUID, "1." + "2" * 63))  # 65 characters
    with RawPeer(node.listener.port) as peer:
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        peer.send(pdata((3, 0x03, raw)))
        for data in pdus[1:]:
            peer.send(data)
        peer.closed_by_node(5)
    wait_for(lambda: node.listener.open_connections == 0, timeout=5)
    assert _incoming(node) == []
    assert rows(node.engine, Instance) == []


def test_watermark_is_checked_as_bytes_arrive(start_node) -> None:
    node = start_node()
    spool = node.listener.spool
    # 24 MiB of head-room (other writers on this disk must not use it up mid-test).
    spool.min_free_bytes = spool.free_bytes() - 24 * 2**20
    big = factories.radiograph(rows=3000, columns=6000, bits=16)  # 36 MB
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            for path in _incoming(node):
                with contextlib.suppress(OSError):
                    peak = max(peak, path.stat().st_size)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        statuses = [r.status for r in send(node, [big]).results]
    finally:
        stop.set()
        watcher.join(5)
    assert statuses == [OUT_OF_RESOURCES]
    # At most one PDU (1 MiB) past the watermark was ever written.
    assert peak <= 25 * 2**20 + node.settings.node.max_pdu
    assert _incoming(node) == []
    (rej,) = rows(node.engine, Rejection)
    assert "watermark" in rej.reason


def _nul_patient_file(tmp_path: Path) -> tuple[Path, Dataset]:
    ds = factories.radiograph(rows=64, columns=64)
    ds.PatientID = "PHI-SECRET-4711ZZ"
    path = factories.write(ds, tmp_path / "nul.dcm")
    data = path.read_bytes().replace(b"4711ZZ", b"4711\x00Z")
    path.write_bytes(data)
    return path, ds


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_nul_in_patient_id_is_a_permanent_error_without_phi_in_logs(
    start_node, tmp_path, caplog, backend, request
) -> None:
    overrides = {"database_url": request.getfixturevalue("pg_url")} if backend == "postgres" else {}
    node = start_node(**overrides)
    path, _ds = _nul_patient_file(tmp_path)
    caplog.set_level(logging.DEBUG)
    statuses = [send(node, [path]).results[0].status for _ in range(2)]
    assert statuses == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    rejected = rows(node.engine, Rejection)
    assert len(rejected) == 2 and all("PatientID" in r.reason for r in rejected)
    assert "PHI-SECRET" not in caplog.text
    assert rows(node.engine, Instance) == []
    assert _incoming(node) == []


def test_recorder_tells_permanent_from_transient_database_errors(start_node, pg_url) -> None:
    """Values PostgreSQL will never take raise RecordRefusedError, not a retryable error."""
    from dicom_node.eligibility import Decision
    from dicom_node.interfaces import ReceivedInstance, RecordRefusedError

    node = start_node(database_url=pg_url)
    recorder = node.listener.recorder
    assoc_id = recorder.association_started(PeerInfo("A", "CXR_TRIAGE", "127.0.0.1", 1))
    record = ReceivedInstance(
        association_id=assoc_id,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid=CR_IMAGE_STORAGE,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CR",
        accession_number="A1",
        patient_id="PHI-SECRET\x00",
        spool_path=None,
        size_bytes=1,
        decision=Decision(eligible=False, rule="test", reason="test"),
    )
    with pytest.raises(RecordRefusedError) as info:
        recorder.instance_received(record)
    assert "PHI-SECRET" not in str(info.value) and "PHI-SECRET" not in repr(info.value.__cause__)
    # A NUL byte in an AE title (from the A-ASSOCIATE-RQ) is stored, made visible.
    recorder.association_rejected(PeerInfo("EV\x00IL", "CXR_TRIAGE", "127.0.0.1", 2), "test")
    (rej,) = rows(node.engine, Rejection)
    assert rej.calling_ae == "EV?IL"


def _nested_sequence(depth: int) -> bytes:
    """A private SQ nested ``depth`` levels deep, undefined lengths, Explicit VR LE."""
    open_ = b""
    for _ in range(depth):
        open_ += struct.pack("<HH2sHL", 0x0029, 0x1010, b"SQ", 0, 0xFFFFFFFF)
        open_ += struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return open_ + close * depth


def _raw_file(tmp_path: Path, tail: bytes, name: str) -> Path:
    """A dataset without pixel data whose encoding ends with ``tail``."""
    ds = factories.radiograph(rows=8, columns=8)
    del ds.PixelData
    path = factories.write(ds, tmp_path / name)
    path.write_bytes(path.read_bytes() + tail)
    return path


@pytest.mark.parametrize(
    "tail",
    [
        _nested_sequence(600),
        struct.pack("<HH2sH", 0x0029, 0x1011, b"ZZ", 4) + b"abcd",  # an unknown VR
    ],
    ids=["nested-600", "unknown-vr"],
)
def test_unreadable_structures_are_cannot_understand(start_node, tmp_path, tail) -> None:
    node = start_node()
    path = _raw_file(tmp_path, tail, "odd.dcm")
    assert send(node, [path]).results[0].status == CANNOT_UNDERSTAND
    assert _echo_time(node) < 5


def test_tls_client_that_never_handshakes_blocks_no_one(start_node, tmp_path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    node = start_node(tls_cert=pki.server_cert, tls_key=pki.server_key, handshake_timeout=2)
    target = Destination("CXR_TRIAGE", "127.0.0.1", node.listener.port)
    options = SenderOptions(calling_ae="SCU", acse_timeout=5, ssl_context=client_context(pki.ca))
    with RawPeer(node.listener.port) as silent:
        start = time.monotonic()
        assert echo(target, options) == 0
        assert time.monotonic() - start < 5
        (rej,) = wait_for(lambda: rows(node.engine, Rejection), timeout=10)
        assert silent.closed_by_node(5)
    assert "TLS handshake failed" in rej.reason
    assert rej.peer_host == "127.0.0.1" and rej.peer_port > 0


def test_connection_limit_is_recorded(start_node) -> None:
    node = start_node(max_connections=3)
    peers = [RawPeer(node.listener.port) for _ in range(3)]
    try:
        wait_for(lambda: node.listener.open_connections == 3, timeout=5)
        with RawPeer(node.listener.port) as extra:
            assert extra.closed_by_node(5)
        (rej,) = wait_for(lambda: rows(node.engine, Rejection), timeout=5)
        assert "connections already open" in rej.reason and rej.peer_host == "127.0.0.1"
    finally:
        for peer in peers:
            peer.close()
    wait_for(lambda: node.listener.open_connections == 0, timeout=10)
    assert echo(dest(node)) == 0


def test_stale_incoming_files_are_swept(start_node) -> None:
    node = start_node()
    stale = node.listener.spool.incoming / "tmpleft.dcm"
    stale.write_bytes(b"x" * 100)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    node.listener._next_sweep = 0.0  # the accept loop sweeps every 30 s; do not wait for it
    wait_for(lambda: not stale.exists(), timeout=5)


def test_stop_does_not_wait_for_silent_connections(start_node) -> None:
    node = start_node()
    peers = [RawPeer(node.listener.port) for _ in range(5)]
    with RawPeer(node.listener.port) as associated:
        associated.associate()
        wait_for(lambda: node.listener.open_connections == 6, timeout=5)
        start = time.monotonic()
        node.listener.stop()
        assert time.monotonic() - start < 7
        assert associated.closed_by_node(5)
    for peer in peers:
        assert peer.closed_by_node(5)
        peer.close()


def test_store_request_without_dataset_is_cannot_understand(start_node) -> None:
    node = start_node()
    command = store_command(CR_IMAGE_STORAGE, "1.2.3.4", data_set_type=0x0101)  # no dataset
    with RawPeer(node.listener.port) as peer:
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        peer.send(pdata((3, 0x03, command_bytes(command))))
        assert dimse_response_status(peer.receive()) == CANNOT_UNDERSTAND


# Input 4330 of `bench/fuzz.py --seed 1`: a bit-flipped A-ASSOCIATE-RQ on which pynetdicom's
# negotiation raised TypeError in the acceptor thread.
_FLIPPED_RQ = bytes.fromhex(
    "0100000000f5000100004358525f54524941474520202020202046555a5a202020202020202020202020"
    "000000000010000000000000000000000000000004000000000000000000000010000015312e322e3834"
    "302e31303030380e332e312e312e312000002e2100000010000011312e302e3834302e31303030382e31"
    "2e3140000011312e322e3834302e31303032382e312e32200000380300000030400019312e322e383430"
    "2e31303030382e352e312e342e312e312e3140000013312e322e3834302e31303030382e312e322e3150"
    "00002651000004000040005200001a312e322e3832362e302e312e333638303034332e392e39393939"
)


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")  # invalid on purpose
def test_negotiation_error_is_aborted_not_a_thread_crash(start_node, monkeypatch) -> None:
    crashed: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))
    node = start_node()
    with RawPeer(node.listener.port) as peer:
        peer.send(_FLIPPED_RQ)
        assert peer.receive().pdu_type == A_ABORT
    wait_for(lambda: node.listener.open_connections == 0, timeout=5)
    assert crashed == []
    assert _echo_time(node) < 5


def test_a_whole_store_and_a_pipelined_echo_in_one_write_are_both_answered(start_node) -> None:
    """The reader's buffer: a command, ~60 fragments and the last one, then a C-ECHO that the
    peer did not wait to send, all in one TCP write. Everything after the command waits in the
    buffer until the DUL has acted on it, and nothing is left there unanswered."""
    node = start_node()
    ds = factories.radiograph(modality="CR", rows=1024, columns=1024, bits=16)
    burst = b"".join(store_rq(ds)) + b"".join(echo_rq(context_id=1, message_id=2))
    with RawPeer(node.listener.port) as peer:
        assert peer.associate().pdu_type == A_ASSOCIATE_AC
        peer.send(burst)
        assert dimse_response_status(peer.receive()) == 0x0000  # the C-STORE
        assert dimse_response_status(peer.receive()) == 0x0000  # the C-ECHO
    (row,) = rows(node.engine, Instance)
    assert row.sop_instance_uid == ds.SOPInstanceUID and row.spool_path
    assert pydicom.dcmread(node.listener.spool.path_of(row.spool_path)).PixelData == ds.PixelData
