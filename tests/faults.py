"""Fault injection on the product as deployed: real processes, real services, real faults.

A :class:`Deployment` is ``cxr-triage listen`` and ``cxr-triage work`` as separate processes,
PostgreSQL, a private Redis and dcmtk's storescp as the PACS. A :class:`Modality` sends studies
made from a real chest radiograph (new UIDs per instance) and keeps the ones the node
acknowledged. Each scenario injects one fault, lets the system settle within a bounded time and
returns a :class:`Tally` of what became of every acknowledged instance.

Used by ``tests/test_faults.py`` (CI) and ``bench/faults.py`` (the table in
``docs/reliability.md``).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.helpers import cli_env
from tests.services import (
    PrivatePostgres,
    RedisServer,
    StoreSCP,
    free_port,
    log_tail,
    require,
    wait_port,
)
from worker.db.engine import make_engine
from worker.db.models import Study, StudyState

logger = logging.getLogger(__name__)

#: Where a study is when nothing more will happen to it without new images or ``replay``.
SETTLED = {StudyState.DONE, StudyState.SKIPPED, StudyState.DEAD_LETTER, StudyState.FAILED}
#: Settled, but no result: ``cxr-triage replay --list`` and ``audit studies --state`` show these.
HELD = {StudyState.DEAD_LETTER, StudyState.FAILED}

#: A host name that fails locally (a DNS label is at most 63 octets): no query leaves the machine.
UNRESOLVABLE = "x" * 64 + ".invalid"

SOURCE_IMAGE = "cr_pa_chest_jpeg_baseline.dcm"  # a real PA chest radiograph, 127 kB
LARGE_IMAGE = "cr_pa_chest_monochrome1.dcm"  # the same kind of image, 1 MB, for the full disk


_SLOW_SCP = """
import sys, time, uuid
from pathlib import Path
from pynetdicom import AE, evt, AllStoragePresentationContexts

folder, port, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def on_store(event):
    time.sleep(delay)  # answers late, but answers: the object is stored
    ds = event.dataset
    ds.file_meta = event.file_meta
    ds.save_as(folder / f"{uuid.uuid4().hex}.dcm", enforce_file_format=True)
    return 0x0000

ae = AE("PACS")
ae.supported_contexts = AllStoragePresentationContexts
ae.dimse_timeout = ae.network_timeout = 600
ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, on_store)])
"""


class SlowPACS(StoreSCP):
    """A PACS (pynetdicom) that stores every object under a name of its own, as storescp +uf
    does, but answers each C-STORE only after ``delay`` seconds."""

    def __init__(self, folder: Path, delay: float) -> None:
        super().__init__(folder)
        self.delay = delay

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SLOW_SCP, str(self.folder), str(self.port), str(self.delay)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, process=self.proc)


@dataclass
class Tally:
    """What became of every acknowledged instance after one fault.

    ``delivered``: its study's result (SR citing it) reached the PACS. ``held``: its study ended
    in ``dead_letter`` or ``failed``, which ``replay --list`` and the audit show. ``lost``:
    neither. ``duplicated``: result objects stored again under new UIDs for the same input.
    ``resent``: the same result UID stored more than once (harmless: the PACS keeps one).
    """

    fault: str
    acknowledged: int = 0
    delivered: int = 0
    held: int = 0
    lost: int = 0
    duplicated: int = 0
    resent: int = 0
    seconds: float = 0.0
    recovery: float = 0.0  # from the fault to every study settled
    unaccounted: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"| {self.fault} | {self.acknowledged} | {self.delivered} | {self.held} | "
            f"{self.lost} | {self.duplicated} | {self.resent} | {self.recovery:.0f} | "
            f"{self.seconds:.0f} |"
        )


TABLE_HEADER = (
    "| fault | acknowledged | delivered | held | lost | duplicated | re-sent same UIDs "
    "| recovery s | s |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def make_study(source: Path, images: int, tag: str) -> list[Dataset]:
    """``images`` copies of a real radiograph as one new study (UIDs derived from ``tag``)."""
    template = pydicom.dcmread(source)
    study_uid = generate_uid(entropy_srcs=[tag, "study"])
    series_uid = generate_uid(entropy_srcs=[tag, "series"])
    out: list[Dataset] = []
    for i in range(images):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, "image", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        out.append(ds)
    return out


class Modality:
    """A sending modality: it remembers which instances the node acknowledged (0x0000)."""

    def __init__(self, port: int, ae_title: str = "MODALITY") -> None:
        self.port = port
        self.ae_title = ae_title
        self.acknowledged: dict[str, str] = {}  # SOP Instance UID -> Study Instance UID
        self.statuses: Counter[int] = Counter()

    def associate(self, datasets: Iterable[Dataset]):
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for ctx in {(d.SOPClassUID, d.file_meta.TransferSyntaxUID) for d in datasets}:
            ae.add_requested_context(*ctx)
        return ae.associate("127.0.0.1", self.port, ae_title="CXR_TRIAGE")

    def store(self, assoc, ds: Dataset) -> int | None:
        """C-STORE one instance on an open association; its status, None if no answer."""
        try:
            reply = assoc.send_c_store(ds)
        except (RuntimeError, OSError) as exc:
            logger.info("C-STORE of %s raised: %s", ds.SOPInstanceUID, exc)
            return None
        status = int(reply.Status) if "Status" in reply else None
        if status is not None:
            self.statuses[status] += 1
        if status == 0:
            self.acknowledged[ds.SOPInstanceUID] = ds.StudyInstanceUID
        return status

    def send(self, datasets: list[Dataset]) -> list[int | None]:
        """Send a study on one association; the status of each instance."""
        assoc = self.associate(datasets)
        if not assoc.is_established:
            return [None] * len(datasets)
        statuses = [self.store(assoc, ds) for ds in datasets]
        if assoc.is_established:
            assoc.release()
        return statuses


class ProcessExitedError(RuntimeError):
    """A process the scenario needs has exited (see :meth:`Deployment.check_alive`)."""


class Deployment:
    """listener + worker processes, PostgreSQL, a private Redis and a storescp PACS."""

    def __init__(self, root: Path, database_url: str, **settings: str) -> None:
        require(shutil.which("storescp") is not None, "dcmtk storescp is not installed")
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.database_url = database_url
        self.redis = RedisServer(root)
        # +uf: every object received gets its own file, so a second copy is seen, not overwritten.
        self.pacs = StoreSCP(root / "pacs", extra_args=("+uf",))
        defaults = {
            "CXR_BIND": "127.0.0.1",
            "CXR_PORT": str(self.port),
            "CXR_DATABASE_URL": database_url,
            "CXR_BROKER_URL": self.redis.url,
            "CXR_DESTINATIONS": self.pacs.address,
            "CXR_QUIET_SECONDS": "2",
            "CXR_MONITOR_INTERVAL": "0.5",
            "CXR_DELIVERY_RETRIES": "2",
            "CXR_DELIVERY_BACKOFF": "1",
            "CXR_WORKER_METRICS_PORT": "0",
            "CXR_WORKER_CONCURRENCY": "1",
            "CXR_LOG_LEVEL": "INFO",
        }
        self.env = cli_env(self.data_dir, **{**defaults, **settings})
        self.listener: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.log_path = root / "processes.log"
        self.log = self.log_path.open("ab")
        self.engine = make_engine(database_url)
        self.started = time.monotonic()
        self.fault_at: float | None = None  # when the scenario injected its fault
        self.settled_at: float | None = None

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, args: list[str], prefix: list[str]) -> subprocess.Popen[bytes]:
        # Own session: a kill reaches the worker's prefork children too.
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "worker.cli.main", *args],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_listener(self, prefix: list[str] | None = None) -> None:
        self.listener = self._spawn(["listen"], prefix or [])
        self.log.flush()
        wait_port(self.port, timeout=60, process=self.listener, log=self.log_path)

    def start_worker(self, prefix: list[str] | None = None) -> None:
        self.worker = self._spawn(["work"], prefix or [])

    def start(self) -> None:
        self.redis.start()
        self.pacs.start()
        self.start_listener()
        self.start_worker()

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill_listener(self) -> None:
        self._kill(self.listener, signal.SIGKILL)
        self.listener = None  # gone on purpose: not a failure for check_alive

    def kill_worker(self) -> None:
        self._kill(self.worker, signal.SIGKILL)
        self.worker = None

    def check_alive(self) -> None:
        """Raise at once, with the processes' log tail, when the listener or worker the
        scenario left running has exited: a wait would otherwise sit out its whole timeout."""
        for name, proc in (("listener", self.listener), ("worker", self.worker)):
            if proc is not None and proc.poll() is not None:
                self.log.flush()
                raise ProcessExitedError(
                    f"the {name} exited with status {proc.returncode} mid-scenario; "
                    f"end of {self.log_path}:\n{log_tail(self.log_path, 40)}"
                )

    def stop(self) -> None:
        self._kill(self.worker, signal.SIGTERM)
        self._kill(self.listener, signal.SIGTERM)
        self.pacs.stop()
        self.redis.stop()
        self.engine.dispose()
        self.log.close()

    # -- observing --------------------------------------------------------------------------

    def states(self) -> dict[str, StudyState]:
        with Session(self.engine) as s:
            rows = s.execute(select(Study.study_instance_uid, Study.state)).all()
        return {uid: StudyState(state) for uid, state in rows}

    def wait_state(self, study_uid: str, states: set[StudyState], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.states().get(study_uid) in states:
                return True
            self.check_alive()
            time.sleep(0.05)
        return False

    def settle(self, study_uids: set[str], timeout: float) -> bool:
        """Wait (bounded) until every study has settled; False if one had not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states()
            if all(states.get(uid) in SETTLED for uid in study_uids):
                self.settled_at = time.monotonic()
                return True
            self.check_alive()
            time.sleep(0.5)
        logger.warning("not settled after %.0f s: %s", timeout, self.states())
        return False

    def unaccounted(self) -> list[str]:
        """What ``cxr-triage audit reconcile --grace 0`` reports."""
        from datetime import UTC, datetime, timedelta

        from worker.audit import reconcile

        with Session(self.engine) as s:
            found = reconcile(s, datetime(2000, 1, 1, tzinfo=UTC), timedelta(0))
        return [f"{r['sop_instance_uid']}: {r['reason']}" for r in found]

    def tally(self, fault: str, modality: Modality) -> Tally:
        """Compare what the node acknowledged with what the PACS holds and the database says."""
        tally = Tally(fault, acknowledged=len(modality.acknowledged))
        tally.seconds = time.monotonic() - self.started
        if self.fault_at is not None and self.settled_at is not None:
            tally.recovery = max(0.0, self.settled_at - self.fault_at)
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in self.pacs.received()]
        cited, tally.duplicated, tally.resent = pacs_counts(received)
        states = self.states()
        for sop_uid, study_uid in modality.acknowledged.items():
            delivered = sop_uid in cited
            held = states.get(study_uid) in HELD
            tally.delivered += delivered
            tally.held += held
            tally.lost += not (delivered or held)
        tally.unaccounted = self.unaccounted()
        return tally


def pacs_counts(received: Sequence[Dataset]) -> tuple[set[str], int, int]:
    """From the objects a PACS received: the source instances its SRs cite, how many objects
    repeat an earlier one's input under new UIDs, and how many arrived again with the same UID."""
    copies = Counter(ds.SOPInstanceUID for ds in received)
    resent = sum(n - 1 for n in copies.values())
    # One SOP Instance UID per (kind, study, input): more is the same result under new UIDs.
    by_input: dict[tuple[str, str, frozenset[str]], set[str]] = defaultdict(set)
    cited: set[str] = set()
    for ds in received:
        inputs = _inputs_of(ds)
        by_input[(ds.Modality, ds.StudyInstanceUID, inputs)].add(ds.SOPInstanceUID)
        if ds.Modality == "SR":
            cited |= inputs
    duplicated = sum(len(uids) - 1 for uids in by_input.values())
    return cited, duplicated, resent


def _inputs_of(ds: Dataset) -> frozenset[str]:
    """The source instances a result object was made from."""
    if ds.Modality == "SR":
        seq = ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        return frozenset(
            sop.ReferencedSOPInstanceUID
            for study in seq
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence
            if sop.ReferencedSOPClassUID != ds.SOPClassUID
        )
    return frozenset(item.ReferencedSOPInstanceUID for item in ds.get("SourceImageSequence", []))


# -- scenarios ----------------------------------------------------------------------------

Scenario = Callable[[Path, str, Path], Tally]
SETTLE_S = 240.0


def listener_killed(root: Path, database_url: str, shared: Path) -> Tally:
    """SIGKILL the listener with an association open; restart it; the modality resends."""
    with Deployment(root, database_url) as dep:
        dep.start()
        modality = Modality(dep.port)
        first = make_study(shared / SOURCE_IMAGE, 2, "listener-killed-1")
        second = make_study(shared / SOURCE_IMAGE, 3, "listener-killed-2")
        modality.send(first)
        assoc = modality.associate(second)
        for ds in second[:2]:
            modality.store(assoc, ds)
        dep.fault_at = time.monotonic()
        dep.kill_listener()
        assoc.abort()
        dep.start_listener()
        modality.send(second)  # the association failed: the modality sends the study again
        dep.settle({first[0].StudyInstanceUID, second[0].StudyInstanceUID}, SETTLE_S)
        return dep.tally("listener SIGKILLed mid-association", modality)


def worker_killed(root: Path, database_url: str, shared: Path) -> Tally:
    """SIGKILL the worker (all its processes) while it classifies; start a new one."""
    with Deployment(root, database_url) as dep:
        dep.start()
        modality = Modality(dep.port)
        study = make_study(shared / SOURCE_IMAGE, 3, "worker-killed")
        uid = study[0].StudyInstanceUID
        modality.send(study)
        if not dep.wait_state(uid, {StudyState.PROCESSING}, timeout=120):
            raise RuntimeError(f"the study never reached processing: {dep.states()}")
        dep.fault_at = time.monotonic()
        dep.kill_worker()
        dep.start_worker()  # its message is unacknowledged in Redis: the sweeper sends it again
        dep.settle({uid}, SETTLE_S)
        return dep.tally("worker SIGKILLed mid-inference", modality)


def redis_restarted(root: Path, database_url: str, shared: Path) -> Tally:
    """Studies queued, then Redis restarted without persistence: their messages are gone."""
    with Deployment(root, database_url) as dep:
        dep.redis.start()
        dep.pacs.start()
        dep.start_listener()  # no worker yet: the studies wait in the queue
        modality = Modality(dep.port)
        studies = [make_study(shared / SOURCE_IMAGE, 2, f"redis-{i}") for i in range(2)]
        for study in studies:
            modality.send(study)
        uids = {s[0].StudyInstanceUID for s in studies}
        for uid in uids:
            if not dep.wait_state(uid, {StudyState.QUEUED}, timeout=60):
                raise RuntimeError(f"the study was never queued: {dep.states()}")
        dep.fault_at = time.monotonic()
        dep.redis.stop()
        dep.redis.start()  # --save "" --appendonly no: an empty broker
        dep.start_worker()
        dep.settle(uids, SETTLE_S)
        return dep.tally("Redis restarted without persistence", modality)


#: How long the PACS stays down; the retry schedule below outlasts it.
PACS_DOWN_S = 60.0


def pacs_down(root: Path, database_url: str, shared: Path) -> Tally:
    """The PACS is down for a minute while results wait to be sent."""
    # Retries 2, 4, ... 64 s apart (126 s in all), longer than the lease: the sweeper knows when
    # each retry is due and leaves it to its task.
    with Deployment(
        root,
        database_url,
        CXR_DELIVERY_RETRIES="6",
        CXR_DELIVERY_BACKOFF="2",
    ) as dep:
        dep.start()
        dep.pacs.stop()
        down_at = dep.fault_at = time.monotonic()
        modality = Modality(dep.port)
        studies = [make_study(shared / SOURCE_IMAGE, 2, f"pacs-down-{i}") for i in range(2)]
        for study in studies:
            modality.send(study)
        time.sleep(max(0.0, PACS_DOWN_S - (time.monotonic() - down_at)))
        dep.pacs.start()
        dep.settle({s[0].StudyInstanceUID for s in studies}, SETTLE_S)
        return dep.tally(f"PACS down for {PACS_DOWN_S:.0f} s", modality)


def unresolvable_destination(root: Path, database_url: str, shared: Path) -> Tally:
    """A second destination whose host name does not resolve: the PACS still gets its copy."""
    with Deployment(root, database_url) as dep:
        dep.env["CXR_DESTINATIONS"] = f"{dep.pacs.address},NOWHERE@{UNRESOLVABLE}:104"
        dep.start()
        modality = Modality(dep.port)
        study = make_study(shared / SOURCE_IMAGE, 2, "unresolvable")
        dep.fault_at = time.monotonic()
        modality.send(study)
        dep.settle({study[0].StudyInstanceUID}, SETTLE_S)
        return dep.tally("a destination that does not resolve", modality)


def disk_full(root: Path, database_url: str, shared: Path) -> Tally:
    """The data disk fills up while a study arrives; space comes back; the modality resends
    what the node refused.

    The data directory is a small tmpfs in a mount namespace of its own (the listener's; the
    worker joins it), so the disk really fills; CXR_MIN_FREE_MB is 0, so no margin is kept and
    the node must see for itself that an instance no longer fits (0xA700, nothing half-written).
    """
    require(shutil.which("unshare") is not None, "unshare is not installed")
    with Deployment(root, database_url) as dep:
        dep.data_dir.mkdir(parents=True, exist_ok=True)
        filler = dep.data_dir / "filler"
        mount = (
            f'mount -t tmpfs -o size=8m tmpfs "{dep.data_dir}" && '
            f'fallocate -l 5m "{filler}" && exec "$@"'
        )
        dep.redis.start()
        dep.pacs.start()
        dep.start_listener(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"]
        )
        assert dep.listener is not None
        namespace = f"/proc/{dep.listener.pid}"
        dep.start_worker(["nsenter", f"--mount={namespace}/ns/mnt", "--"])
        modality = Modality(dep.port)
        study = make_study(shared / LARGE_IMAGE, 4, "disk-full")
        dep.fault_at = time.monotonic()
        statuses = modality.send(study)
        refused = [ds for ds, st in zip(study, statuses, strict=True) if st != 0]
        if not refused:
            raise RuntimeError(f"the disk never filled: statuses {statuses}")
        uid = study[0].StudyInstanceUID
        dep.settle({uid}, SETTLE_S)  # what was acknowledged is processed on the full disk
        Path(f"{namespace}/root{filler}").unlink()  # the operator frees space
        modality.send(refused)
        dep.wait_state(uid, {StudyState.RECEIVING, StudyState.COMPLETE}, timeout=10)
        dep.settle({uid}, SETTLE_S)
        return dep.tally("data disk full, then space freed", modality)


def worker_hung(root: Path, database_url: str, shared: Path) -> Tally:
    """SIGSTOP the worker mid-inference (hung, not dead); start another; wake the first later.

    At the default lease: the hung worker stops renewing, its lease runs out and the sweeper
    re-dispatches the study to the other worker. Woken, the first finds its lease gone and
    records and sends nothing.
    """
    with Deployment(root, database_url) as dep:
        dep.start()
        modality = Modality(dep.port)
        study = make_study(shared / SOURCE_IMAGE, 3, "worker-hung")
        uid = study[0].StudyInstanceUID
        modality.send(study)
        if not dep.wait_state(uid, {StudyState.PROCESSING}, timeout=120):
            raise RuntimeError(f"the study never reached processing: {dep.states()}")
        hung = dep.worker
        assert hung is not None
        dep.fault_at = time.monotonic()
        os.killpg(hung.pid, signal.SIGSTOP)
        dep.start_worker()
        dep.settle({uid}, SETTLE_S)
        tally = dep.tally("worker SIGSTOPped mid-inference (hung)", modality)
        os.killpg(hung.pid, signal.SIGCONT)
        time.sleep(20)  # it finishes its inference and finds the study taken over
        dep._kill(hung, signal.SIGTERM)
        woken = dep.tally("worker SIGSTOPped mid-inference (hung)", modality)
        woken.seconds = tally.seconds  # recovered when the other worker finished
        return woken


#: The lease for the slow PACS, shorter than the default so that the PACS can answer after two
#: leases within the 60 s DIMSE timeout (at the default 45 s lease that would take 90 s).
SLOW_PACS_LEASE_S = 8.0


def slow_pacs(root: Path, database_url: str, shared: Path) -> Tally:
    """The PACS answers every C-STORE after two lease lengths: slow, not dead, never re-sent."""
    with Deployment(root, database_url, CXR_STUCK_AFTER=f"{SLOW_PACS_LEASE_S:g}") as dep:
        dep.pacs = SlowPACS(root / "slow-pacs", delay=2 * SLOW_PACS_LEASE_S)
        dep.env["CXR_DESTINATIONS"] = dep.pacs.address
        dep.start()
        modality = Modality(dep.port)
        study = make_study(shared / SOURCE_IMAGE, 1, "slow-pacs")
        dep.fault_at = time.monotonic()
        modality.send(study)
        dep.settle({study[0].StudyInstanceUID}, SETTLE_S)
        return dep.tally(f"PACS answers after {2 * SLOW_PACS_LEASE_S:.0f} s (2 leases)", modality)


#: How long the database stays down.
PG_DOWN_S = 20.0


def postgres_outage(root: Path, database_url: str, shared: Path) -> Tally:
    """PostgreSQL (a private cluster) stops for 20 s while a study is processed and another
    arrives; the modality sends again what the node did not acknowledge."""
    from worker.db.migrate import upgrade

    pg = PrivatePostgres()
    try:
        pg.start()
        engine = make_engine(pg.url)
        upgrade(engine)
        engine.dispose()
        with Deployment(root, pg.url) as dep:
            dep.start()
            modality = Modality(dep.port)
            first = make_study(shared / SOURCE_IMAGE, 2, "pg-outage-1")
            modality.send(first)
            uid = first[0].StudyInstanceUID
            if not dep.wait_state(uid, {StudyState.PROCESSING}, timeout=120):
                raise RuntimeError(f"the study never reached processing: {dep.states()}")
            dep.fault_at = time.monotonic()
            pg.stop()
            second = make_study(shared / SOURCE_IMAGE, 2, "pg-outage-2")
            statuses = modality.send(second)  # cannot be recorded: not acknowledged
            time.sleep(max(0.0, PG_DOWN_S - (time.monotonic() - dep.fault_at)))
            pg.start()
            refused = [ds for ds, st in zip(second, statuses, strict=True) if st != 0]
            if refused:
                modality.send(refused)  # the modality's retry
            dep.settle({uid, second[0].StudyInstanceUID}, SETTLE_S)
            return dep.tally(f"PostgreSQL down for {PG_DOWN_S:.0f} s", modality)
    finally:
        pg.destroy()


SCENARIOS: dict[str, Scenario] = {
    "listener_killed": listener_killed,
    "worker_killed": worker_killed,
    "redis_restarted": redis_restarted,
    "pacs_down": pacs_down,
    "unresolvable_destination": unresolvable_destination,
    "disk_full": disk_full,
    "worker_hung": worker_hung,
    "slow_pacs": slow_pacs,
    "postgres_outage": postgres_outage,
}
