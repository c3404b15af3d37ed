"""Receive throughput: our listener against dcmtk's storescp, same files, same target.

Every receiver and the sender run at their own defaults first: dcmtk's storescu (with
TCP_NODELAY=1, nothing else set) sends to storescp as installed and to ``cxr-triage listen`` as
shipped. Then the tuned rows, each saying what was tuned: storescp advertising 128 KiB PDUs (the
most dcmtk takes). Ratios are against storescp at its defaults, and beside it against the tuned
storescp. Run from the repository root:

    .venv/bin/python -m bench.receive_throughput --count 200 --target /dev/shm/cxr-bench

``--sender pynetdicom`` sends with pynetdicom's storescu (at its defaults) instead of dcmtk's.
Before the timed runs it records the PDU sizes each receiver negotiates with the sender
(storescu ``-d``; pynetdicom sends PDUs as large as the receiver advertises).

It writes synthetic 2500x3000 16-bit DX images (about 15 MB each) once into --source, then for
1 and for 4 concurrent associations times: storescp (one process; --fork for 4), our listener
with fsync (the product default), our listener without fsync (like-for-like with storescp, which
does not fsync), `listen --processes N` (N processes sharing one socket), and Orthanc (its own
SQLite index; storescu runs inside Orthanc's network namespace, see tests/orthanc.py, so no
relay is in the way). It prints MB/s and the ratio to dcmtk. This is a benchmark, not a test:
nothing asserts on the numbers. ``bench/compare.py`` runs it together with the pipeline.

Before every run it writes to and frees twice the run's volume of memory (``--cold`` skips
this): on the project's VM, memory can come back from the host cold, and the first write into
such a page is slow, whoever makes it. On 2026-12-01 that made our listeners' kernel copies
into tmpfs two to three times as expensive for the rest of a bench run (the previous code's
alike), while dcmtk's were hardly affected; once memory had been touched, both were back to
their usual cost. Warming gives every receiver the same start.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node import synthetic
from tests.services import free_port, log_tail, wait_port

ROOT = Path(__file__).resolve().parents[1]


def make_files(source: Path, count: int) -> list[Path]:
    source.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.dcm"))
    if len(files) >= count:
        return files[:count]
    study = "1.2.826.0.1.3680043.8.498.990001"
    for i in range(len(files), count):
        ds = synthetic.radiograph(rows=2500, columns=3000, bits=16, study_uid=study, seed=i)
        synthetic.write(ds, source / f"dx{i:04d}.dcm")
        print(f"\rmaking synthetic DX {i + 1}/{count}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return sorted(source.glob("*.dcm"))[:count]


#: The senders: a command for ``(ae, port, files)``, each at its own defaults.
SENDERS = {
    # dcmtk's, not the one pynetdicom puts in the venv; it sends PDUs of at most 128 KiB.
    "dcmtk": lambda ae, port, files: [
        "/usr/bin/storescu", "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), *files
    ],
    "pynetdicom": lambda ae, port, files: [
        sys.executable, "-m", "pynetdicom", "storescu", "-aet", "BENCH", "-aec", ae,
        "127.0.0.1", str(port), *files,
    ],
}  # fmt: skip


def send(
    files: list[Path],
    port: int,
    ae: str,
    associations: int,
    wrap: list[str] | None = None,
    *,
    sender: str = "dcmtk",
) -> float:
    """Send with `associations` concurrent storescu processes; return wall seconds.

    ``wrap`` prefixes each storescu command (nsenter into Orthanc's network namespace).
    """
    env = {**os.environ, "TCP_NODELAY": "1"}
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*(wrap or []), *SENDERS[sender](ae, port, list(map(str, chunk)))],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


def probe_file() -> Path:
    """A small instance of its own for :func:`negotiated`, so the timed files stay new."""
    path = Path(tempfile.gettempdir()) / "cxr-bench-probe.dcm"
    if not path.exists():
        synthetic.write(synthetic.radiograph(rows=64, columns=64, seed=999_999), path)
    return path


def negotiated(port: int, ae: str, wrap: list[str] | None = None) -> str:
    """What dcmtk's storescu at its defaults agrees with a receiver: "their max PDU / our send
    PDV", from its debug log of one association."""
    file = probe_file()
    out = subprocess.run(
        [*(wrap or []), "/usr/bin/storescu", "-d", "-aet", "BENCH", "-aec", ae, "127.0.0.1",
         str(port), str(file)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    text = out.stdout + out.stderr
    theirs = [ln.split(":")[-1].strip() for ln in text.splitlines() if "Their Max PDU" in ln]
    pdv = [ln.split("Max Send PDV:")[-1].strip(" )") for ln in text.splitlines() if "PDV" in ln]
    return f"{theirs[-1] if theirs else '?'} / {pdv[-1] if pdv else '?'}"


def run_storescp(
    files: list[Path],
    target: Path,
    associations: int,
    *,
    max_pdu: int | None = None,
    sender: str = "dcmtk",
    probe: list[str] | None = None,
) -> float:
    """storescp at its defaults, or advertising ``max_pdu``; ``probe`` gets what it
    negotiates."""
    port = free_port()
    target.mkdir(parents=True)
    args = ["/usr/bin/storescp", "-aet", "DCMTK", "-od", str(target)]
    if max_pdu is not None:
        args += ["--max-pdu", str(max_pdu)]
    if associations > 1:
        args.append("--fork")
    proc = subprocess.Popen([*args, str(port)], env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_port(port, timeout=60, process=proc)
        if probe is not None:
            probe.append(negotiated(port, "DCMTK"))
            shutil.rmtree(target)
            target.mkdir(parents=True)
        return send(files, port, "DCMTK", associations, sender=sender)
    finally:
        proc.terminate()
        proc.wait(30)


def run_orthanc(
    files: list[Path], target: Path, associations: int, *, sender: str = "dcmtk"
) -> float:
    """Orthanc at its defaults (its own SQLite index, files in ``target``, enough DICOM threads
    for the associations), storescu sent from inside its network namespace straight to its
    port: no relay in the way."""
    from tests.orthanc import Orthanc

    orthanc = Orthanc(target, free_port(), config={"DicomThreadsCount": max(4, associations)})
    orthanc.start()
    try:
        return send(files, 4242, "ORTHANC", associations, orthanc.in_namespace([]), sender=sender)
    finally:
        orthanc.stop()


def listener_env(
    target: Path, port: int, *, fsync: bool = True, max_pdu: int | None = None
) -> dict[str, str]:
    """The environment every bench runs ``cxr-triage listen`` in: the product's defaults but
    for the data folder, the port, fsync when asked, and ``max_pdu`` when given."""
    tuned = {"CXR_MAX_PDU": str(max_pdu)} if max_pdu is not None else {}
    return {
        **os.environ,
        "CXR_DATA_DIR": str(target),
        "CXR_PORT": str(port),
        "CXR_MIN_FREE_MB": "0",
        "CXR_FSYNC": "true" if fsync else "false",
        **tuned,
        "CXR_QUIET_SECONDS": "3600",  # completion and queueing are not what we measure here
        "CXR_LOG_LEVEL": "INFO",  # the default; wait_listening reads it
        "CXR_METRICS_PORT": "0",  # N processes cannot share one metrics port
    }


def start_listener(
    target: Path,
    port: int,
    processes: int,
    *,
    fsync: bool = True,
    checkout: Path = ROOT,
    max_pdu: int | None = None,
) -> subprocess.Popen[bytes]:
    """``cxr-triage listen --processes N`` from ``checkout``, once every process listens."""
    env = listener_env(target, port, fsync=fsync, max_pdu=max_pdu)
    log = target / "listen.log"
    command = [sys.executable, "-m", "worker.cli.main", "listen", "--processes", str(processes)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=checkout, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_listening(proc, log, processes)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc


def run_ours(
    files: list[Path],
    target: Path,
    associations: int,
    *,
    fsync: bool,
    processes: int = 1,
    max_pdu: int | None = None,
    sender: str = "dcmtk",
    probe: list[str] | None = None,
) -> float:
    port = free_port()
    target.mkdir(parents=True)
    proc = start_listener(target, port, processes, fsync=fsync, max_pdu=max_pdu)
    try:
        if probe is not None:
            probe.append(negotiated(port, "CXR_TRIAGE"))
        return send(files, port, "CXR_TRIAGE", associations, sender=sender)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def wait_listening(proc: subprocess.Popen[bytes], log: Path, processes: int) -> None:
    """Wait until every listener process says it is listening, then a moment more.

    With ``--processes N`` the port opens before the children have imported anything, and
    children still starting would take CPU from the run being measured.
    """
    deadline = time.monotonic() + 120
    while log.read_text().count("listening as") < processes:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the listener did not start:\n{log_tail(log)}")
        time.sleep(0.1)
    time.sleep(0.5)  # the broker connection each opens in the background


@dataclass
class Row:
    receiver: str
    associations: int
    seconds: float
    mb_per_s: float
    vs_dcmtk: float  # against storescp at its defaults, same association count, same run
    vs_tuned: float  # against storescp advertising 128 KiB PDUs
    pdu: str  # their max PDU / dcmtk's send PDV, from storescu -d ("" when not probed)


def warm_memory(size: int) -> None:
    """Write to ``size`` bytes of fresh memory and free them (see the module's docstring)."""
    block = b"\x01" * size
    del block


def measure(
    files: list[Path],
    target: Path,
    *,
    repeat: int,
    processes: int,
    orthanc: bool,
    warm: bool = True,
    sender: str = "dcmtk",
) -> list[Row]:
    """Best of ``repeat`` runs of each receiver on ``files``; dcmtk at its defaults first, then
    dcmtk tuned, for each association count."""
    total_bytes = sum(f.stat().st_size for f in files)
    total_mb = total_bytes / 1e6
    tuned = 131072
    # (name, associations, runner, its options); each runner takes (files, target, n, ...).
    configs: list[tuple[str, int, Callable[..., float], dict[str, Any]]] = []
    for n in (1, 4):
        fork = " --fork" if n > 1 else ""
        configs += [
            (f"dcmtk storescp{fork}", n, run_storescp, {}),
            (f"dcmtk storescp{fork} --max-pdu {tuned} (tuned)", n, run_storescp,
             {"max_pdu": tuned}),
            ("cxr-triage listen", n, run_ours, {"fsync": True}),
            ("cxr-triage listen, CXR_FSYNC=false", n, run_ours, {"fsync": False})
            if n == 1
            else (f"cxr-triage listen --processes {processes}", n, run_ours,
                  {"fsync": True, "processes": processes}),
        ]  # fmt: skip
        if orthanc:
            configs.append(("Orthanc", n, run_orthanc, {}))
    baseline: dict[tuple[int, bool], float] = {}
    rows = []
    for name, assocs, run, options in configs:
        best = float("inf")
        probe: list[str] = []
        for i in range(repeat):
            shutil.rmtree(target, ignore_errors=True)
            if warm:
                warm_memory(2 * total_bytes)
            # Orthanc's port is inside its namespace: no probe there.
            asked = {"probe": probe} if i == 0 and run is not run_orthanc else {}
            best = min(best, run(files, target, assocs, sender=sender, **options, **asked))
        shutil.rmtree(target, ignore_errors=True)
        rate = total_mb / best
        if name.startswith("dcmtk"):
            baseline.setdefault((assocs, "tuned" in name), rate)
        rows.append(
            Row(
                name,
                assocs,
                best,
                rate,
                rate / baseline[(assocs, False)],
                float("nan"),  # set below, once the tuned storescp has run
                probe[0] if probe else "",
            )
        )
        print(f"  measured {name} x{assocs}: {rate:.0f} MB/s", file=sys.stderr, flush=True)
    for r in rows:
        r.vs_tuned = r.mb_per_s / baseline[(r.associations, True)]
    return rows


def print_rows(rows: list[Row]) -> None:
    print("| receiver | associations | MB/s | vs dcmtk | vs dcmtk tuned | max PDU / dcmtk sends |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.receiver} | {r.associations} | {r.mb_per_s:.0f} | {r.vs_dcmtk:.2f} | "
            f"{r.vs_tuned:.2f} | {r.pdu} |"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sender", choices=sorted(SENDERS), default="dcmtk", help="storescu to send with"
    )
    parser.add_argument("--count", type=int, default=200, help="synthetic 15 MB DX files")
    parser.add_argument("--source", type=Path, default=Path("/tmp/cxr-bench-source"))
    parser.add_argument("--target", type=Path, default=Path("/dev/shm/cxr-bench"))
    parser.add_argument(
        "--processes", type=int, default=4, help="listener processes for the reuse-port run"
    )
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per configuration")
    parser.add_argument("--no-orthanc", action="store_true", help="leave Orthanc out")
    parser.add_argument(
        "--cold", action="store_true", help="do not warm memory before each run (see above)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    for tool in ("/usr/bin/storescu", "/usr/bin/storescp"):
        if not Path(tool).exists():
            parser.error(f"{tool} not found: apt-get install dcmtk")
    files = make_files(args.source, args.count)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {len(files)} files, {total_mb:.0f} MB; target {args.target}"
    )
    rows = measure(
        files,
        args.target,
        repeat=args.repeat,
        processes=args.processes,
        orthanc=not args.no_orthanc and shutil.which("Orthanc") is not None,
        warm=not args.cold,
        sender=args.sender,
    )
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
