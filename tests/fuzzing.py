"""A seeded fuzzer for the DICOM node: malformed PDUs and datasets sent to a live node.

:func:`make_case` draws one input from a kind (raw garbage, mutated A-ASSOCIATE-RQ, mutated DIMSE
command, mutated dataset, aborts and slow senders, ...) with a seeded ``random.Random``, so a run
is reproducible from its seed. :class:`Campaign` sends cases to a node started as its own process
(``cxr-triage listen``) and checks after every batch what must hold whatever a peer sends:

- the process is alive and answers C-ECHO within 5 s;
- nothing is left in ``spool/incoming/`` once the connections are closed;
- its RSS stays under a bound;
- every ``0x0000`` has an ``instances`` row and, where spooled, a file holding exactly the bytes
  that were sent.

Used by ``tests/test_fuzz.py`` (a few hundred inputs in CI) and ``bench/fuzz.py`` (the long run).
All traffic goes to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode
from sqlalchemy import create_engine, text

from dicom_node.addresses import Destination
from dicom_node.sender import AssociationFailed, SenderOptions, echo
from dicom_node.synthetic import radiograph
from tests.rawdicom import (
    A_ABORT,
    A_ASSOCIATE_AC,
    DEFAULT_CONTEXTS,
    RawPeer,
    associate_rq,
    dimse_response_status,
    pdata,
    pdu,
    store_rq,
)

ECHO_LIMIT_S = 5.0


# -- inputs ------------------------------------------------------------------------------------
@dataclass
class Case:
    """One input: bytes sent before association, or a C-STORE after it."""

    kind: str
    before: list[bytes] = field(default_factory=list)  # sent without associating
    store: list[bytes] | None = None  # P-DATA-TF PDUs sent after associating
    sop_uid: str = ""
    dataset: bytes = b""  # the encoded dataset the store carries, as sent
    hang_up: str = ""  # "", "close" or "abort" after what was sent
    stall: float = 0.0  # seconds to wait before hanging up


def _flip(data: bytes, rng: random.Random, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _small_image(rng: random.Random) -> Dataset:
    size = rng.choice([16, 32, 64])
    return radiograph(rows=size, columns=size, seed=rng.randrange(2**16), sop_uid=generate_uid())


def _encode(ds: Dataset) -> bytes:
    data = encode(ds, False, True)
    assert data is not None
    return data


def _store_pdus(ds: Dataset, data: bytes, rng: random.Random) -> list[bytes]:
    """C-STORE PDUs for ``ds`` whose dataset bytes are ``data`` (which may differ from ds)."""
    pdus = store_rq(ds, max_pdu=rng.choice([4096, 16384]))
    command = pdus[0]
    chunk = 16384 - 6
    frags = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    out = [command]
    for i, frag in enumerate(frags):
        out.append(pdata((3, 0x02 if i == len(frags) - 1 else 0x00, frag)))
    return out


def _elem(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC"):
        return struct.pack("<HH2sHL", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _dataset_case(kind: str, rng: random.Random) -> Case:
    ds = _small_image(rng)
    if kind == "dataset-dotdot-uid":
        setattr(ds, rng.choice(["StudyInstanceUID", "SeriesInstanceUID"]), "../../" + "1" * 20)
    if kind == "dataset-huge-name":
        ds.PatientName = "A" * (10 * 2**20 if rng.random() < 0.2 else 64 * 1024)
    if kind == "dataset-pixels-mismatch":
        ds.Rows = int(ds.Rows) * rng.choice([2, 7, 1000])
    data = _encode(ds)
    if kind == "dataset-bitflip":
        head = min(len(data), 600)  # flip in the attributes, where it matters
        data = _flip(data[:head], rng, rng.randint(1, 8)) + data[head:]
    elif kind == "dataset-truncated":
        data = data[: rng.randrange(len(data))]
    elif kind == "dataset-wrong-vr":
        i = data.find(b"PN")
        if i > 0:
            data = data[:i] + rng.choice([b"ZZ", b"SQ", b"OB", b"\x00\x00", b"UN"]) + data[i + 2 :]
    elif kind == "dataset-huge-length":
        i = rng.randrange(0, max(1, min(len(data) - 8, 400)))
        data = data[:i] + struct.pack("<L", rng.choice([0xFFFFFFFE, 2**31, 2**24])) + data[i + 4 :]
    elif kind == "dataset-endless-sequence":
        # An undefined-length sequence and item that are never closed.
        endless = _elem(0x0029, 0x1010, b"SQ", b"")[:8] + struct.pack("<L", 0xFFFFFFFF)
        endless += struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
        endless += _elem(0x0029, 0x1011, b"LO", b"open") * rng.randint(1, 2000)
        data = data + endless
    elif kind == "dataset-wrong-syntax":
        implicit = encode(ds, True, True)  # sent on the Explicit VR Little Endian context
        assert implicit is not None
        data = implicit
    return Case(kind, store=_store_pdus(ds, data, rng), sop_uid=ds.SOPInstanceUID, dataset=data)


def _command_case(kind: str, rng: random.Random) -> Case:
    ds = _small_image(rng)
    data = _encode(ds)
    pdus = _store_pdus(ds, data, rng)
    if kind == "command-bitflip":
        pdus[0] = pdus[0][:12] + _flip(pdus[0][12:], rng, rng.randint(1, 6))
    elif kind == "command-unnegotiated-context":
        pdus[0] = pdus[0][:10] + bytes([rng.choice([2, 5, 99, 255])]) + pdus[0][11:]
    elif kind == "command-garbage":
        pdus = [pdata((3, 0x03, rng.randbytes(rng.randint(1, 300))))]
    elif kind == "command-long-uid":
        pdus = [_long_uid_command(ds, rng), *pdus[1:]]
    return Case(kind, store=pdus, sop_uid=ds.SOPInstanceUID, dataset=data)


def _long_uid_command(ds: Dataset, rng: random.Random) -> bytes:
    from tests.rawdicom import command_bytes, store_command

    cmd = store_command(ds.SOPClassUID, "1." + "2" * rng.randint(63, 200))
    return pdata((3, 0x03, command_bytes(cmd)))


def _abort_case(kind: str, rng: random.Random) -> Case:
    ds = radiograph(rows=256, columns=256, sop_uid=generate_uid(), seed=rng.randrange(2**16))
    data = _encode(ds)
    pdus = _store_pdus(ds, data, rng)
    cut = rng.randint(1, len(pdus) - 1)
    sent = pdus[:cut]
    if kind == "abort-mid-pdu":
        last = pdus[cut]
        sent.append(last[: rng.randint(1, len(last) - 1)])
    return Case(
        kind,
        store=sent,
        sop_uid=ds.SOPInstanceUID,
        hang_up=rng.choice(["close", "abort"]) if kind == "abort-mid-dataset" else "close",
    )


def _pre_association_case(kind: str, rng: random.Random) -> Case:
    if kind == "raw-garbage":
        return Case(kind, before=[rng.randbytes(rng.randint(1, 4096))])
    if kind == "pdu-huge-length":
        header = struct.pack(">BBL", rng.randint(1, 7), 0, rng.randint(2**20, 2**32 - 1))
        return Case(kind, before=[header + rng.randbytes(rng.randint(0, 64))])
    rq = associate_rq(calling=rng.choice(["FUZZ", "X" * 16, ""]), contexts=DEFAULT_CONTEXTS)
    if kind == "associate-bitflip":
        return Case(kind, before=[rq[:6] + _flip(rq[6:], rng, rng.randint(1, 10))])
    if kind == "associate-truncated":
        return Case(kind, before=[rq[: rng.randrange(1, len(rq))]], stall=rng.uniform(0, 0.2))
    if kind == "associate-nul-ae":
        bad = rq[:10] + b"CXR\x00TRIAGE\x00\x00\x00\x00\x00\x00" + rq[26:]
        return Case(kind, before=[bad])
    raise ValueError(kind)


def _valid_case(kind: str, rng: random.Random) -> Case:
    ds = _small_image(rng)
    data = _encode(ds)
    return Case(kind, store=_store_pdus(ds, data, rng), sop_uid=ds.SOPInstanceUID, dataset=data)


KINDS: dict[str, Callable[[str, random.Random], Case]] = {
    "raw-garbage": _pre_association_case,
    "pdu-huge-length": _pre_association_case,
    "associate-bitflip": _pre_association_case,
    "associate-truncated": _pre_association_case,
    "associate-nul-ae": _pre_association_case,
    "command-bitflip": _command_case,
    "command-unnegotiated-context": _command_case,
    "command-garbage": _command_case,
    "command-long-uid": _command_case,
    "dataset-bitflip": _dataset_case,
    "dataset-truncated": _dataset_case,
    "dataset-wrong-vr": _dataset_case,
    "dataset-huge-length": _dataset_case,
    "dataset-endless-sequence": _dataset_case,
    "dataset-pixels-mismatch": _dataset_case,
    "dataset-dotdot-uid": _dataset_case,
    "dataset-huge-name": _dataset_case,
    "dataset-wrong-syntax": _dataset_case,
    "abort-mid-dataset": _abort_case,
    "abort-mid-pdu": _abort_case,
    "valid": _valid_case,
}


def make_case(rng: random.Random, kinds: list[str] | None = None) -> Case:
    kind = rng.choice(sorted(kinds or KINDS))
    return KINDS[kind](kind, rng)


# -- sending -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str
    result: str  # "0xC210", "abort", "closed", "reject", ...
    sop_uid: str = ""
    dataset: bytes = b""


def send_case(case: Case, port: int, timeout: float = 10.0) -> Outcome:
    """Send one case to the node and say what it answered."""
    try:
        with RawPeer(port, timeout=timeout) as peer:
            if case.before:
                for data in case.before:
                    peer.send(data)
                if case.stall:
                    time.sleep(case.stall)
                return Outcome(case.kind, _answer(peer, timeout))
            reply = peer.associate()
            if reply.pdu_type != A_ASSOCIATE_AC:
                return Outcome(case.kind, f"associate-{reply.pdu_type}")
            for data in case.store or []:
                peer.send(data)
            if case.hang_up == "abort":
                peer.send(pdu(A_ABORT, bytes(4)))
            if case.hang_up:
                return Outcome(case.kind, "hung-up")
            result = _answer(peer, timeout)
            if result == "0x0000":
                return Outcome(case.kind, result, case.sop_uid, case.dataset)
            return Outcome(case.kind, result)
    except (ConnectionError, BrokenPipeError):
        return Outcome(case.kind, "closed")
    except TimeoutError:
        return Outcome(case.kind, "no-answer")


def _answer(peer: RawPeer, timeout: float) -> str:
    try:
        reply = peer.receive(timeout)
    except (ConnectionError, OSError):
        return "closed"
    if reply.pdu_type == 0x04:
        try:
            status = dimse_response_status(reply)
        except Exception:
            return "pdata"
        return f"0x{status:04X}"
    return {2: "accept", 3: "reject", 7: "abort"}.get(reply.pdu_type, f"pdu-{reply.pdu_type}")


# -- the node under test ---------------------------------------------------------------------------
class NodeProcess:
    """``cxr-triage listen`` in its own process on a free loopback port."""

    def __init__(self, data_dir: Path, port: int, **env: str) -> None:
        self.data_dir = data_dir
        self.port = port
        self.database_url = env.get(
            "CXR_DATABASE_URL", f"sqlite:///{data_dir / 'cxr-triage.sqlite'}"
        )
        environ = dict(os.environ)
        environ.update(
            {
                "CXR_DATA_DIR": str(data_dir),
                "CXR_PORT": str(port),
                "CXR_BIND": "127.0.0.1",
                "CXR_MIN_FREE_MB": "0",
                "CXR_METRICS_PORT": "0",
                "CXR_LOG_LEVEL": "WARNING",
                "CXR_PDU_TIMEOUT": "2",
                "CXR_QUIET_SECONDS": "3600",  # keep studies receiving: this is about the node
                **env,
            }
        )
        self.log = open(data_dir.parent / "node.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "listen"],
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self.answers_echo():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start; see {self.log.name}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def answers_echo(self, limit: float = ECHO_LIMIT_S) -> bool:
        options = SenderOptions(calling_ae="FUZZ_PROBE", acse_timeout=limit, dimse_timeout=limit)
        start = time.monotonic()
        try:
            ok = echo(Destination("CXR_TRIAGE", "127.0.0.1", self.port), options) == 0
        except (AssociationFailed, OSError):
            return False
        return ok and time.monotonic() - start <= limit

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def incoming(self) -> list[Path]:
        return list((self.data_dir / "spool" / "incoming").iterdir())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


# -- a campaign ------------------------------------------------------------------------------------
@dataclass
class Report:
    seed: int
    sent: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    wedges: int = 0
    leftovers: int = 0
    unmatched_successes: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)  # 0xC211: a bug in the node
    peak_rss: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.crashes
            or self.wedges
            or self.leftovers
            or self.unmatched_successes
            or self.internal_errors
        )


class Campaign:
    """Send ``count`` seeded cases to a node in batches, checking it after each batch."""

    def __init__(
        self,
        node: NodeProcess,
        seed: int,
        rss_limit: int = 1536 * 2**20,
        kinds: list[str] | None = None,
    ) -> None:
        self.node = node
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.rss_limit = rss_limit
        self._successes: list[Outcome] = []

    def run(
        self, count: int, batch: int = 50, progress: Callable[[Report], None] | None = None
    ) -> Report:
        start = time.monotonic()
        while self.report.sent < count:
            n = min(batch, count - self.report.sent)
            for _ in range(n):
                case = make_case(self.rng, self.kinds)
                outcome = send_case(case, self.node.port)
                self.report.sent += 1
                if outcome.result == "0xC211":
                    self.report.internal_errors.append(f"input {self.report.sent}: {case.kind}")
                self.report.kinds[case.kind] += 1
                self.report.results[outcome.result] += 1
                if outcome.result == "0x0000":
                    self._successes.append(outcome)
            self.check()
            self.report.seconds = time.monotonic() - start
            if progress is not None:
                progress(self.report)
            if self.report.crashes:
                break
        return self.report

    def check(self) -> None:
        """The invariants, after a batch."""
        r = self.report
        if not self.node.alive():
            r.crashes += 1
            return
        if not self.node.answers_echo():
            r.wedges += 1
        # Connections end a moment after the peer hangs up; give them a bounded while.
        deadline = time.monotonic() + 5
        while self.node.incoming() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self.node.incoming()
        r.leftovers += len(left)
        for path in left:  # count each once
            path.unlink(missing_ok=True)
        rss = self.node.rss()
        r.peak_rss = max(r.peak_rss, rss)
        if rss > self.rss_limit:
            r.wedges += 1
        self._check_successes()

    def _check_successes(self) -> None:
        if not self._successes:
            return
        engine = create_engine(self.node.database_url)
        query = text("SELECT spool_path FROM instances WHERE sop_instance_uid = :uid")
        try:
            with engine.connect() as conn:
                for outcome in self._successes:
                    row = conn.execute(query, {"uid": outcome.sop_uid}).first()
                    if row is None:
                        self.report.unmatched_successes.append(f"{outcome.sop_uid}: no row")
                        continue
                    if row[0] is None:
                        continue  # acknowledged, recorded, not kept (ineligible)
                    path = self.node.data_dir / "spool" / "studies" / row[0]
                    if not path.exists() or not path.read_bytes().endswith(outcome.dataset):
                        self.report.unmatched_successes.append(f"{outcome.sop_uid}: file differs")
        finally:
            engine.dispose()
        self._successes.clear()
