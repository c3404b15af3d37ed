"""Where the CPU goes when four associations send at once: receivers against senders, user
against system, for dcmtk ``storescp --fork`` and ``cxr-triage listen --processes N``.

Throughput on 2 cores is bounded by the CPU that senders, receivers and the kernel share, so
this prints, per run of the same files as ``bench/receive_throughput.py``: MB/s, the
receivers' user and system CPU seconds (``/proc/PID/stat`` of the listener and its children),
and the senders' (``wait4`` of each ``storescu``). ``--checkout DIR`` runs another checkout's
listener (a ``git worktree`` of an older commit) for an A/B on the same files in the same
minutes. Receivers alternate in each round; memory is warmed before each run as in
``receive_throughput``. A benchmark, not a test. Run from the repository root:

    .venv/bin/python -m bench.receive_cpu --rounds 3 --checkout /tmp/old
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.receive_throughput import make_files, start_listener, warm_memory
from tests.services import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]

_TICKS = os.sysconf("SC_CLK_TCK")
# dcmtk's, not the ones pynetdicom puts in the venv. storescu sends PDUs of at most 128 KiB to
# either receiver; storescp is tuned to accept them (its default is 16 KiB), our listener is as
# shipped (it advertises 1 MiB), so both receive the same PDUs.
_STORESCU = ["/usr/bin/storescu", "-aet", "BENCH", "-aec"]
_STORESCP = ["/usr/bin/storescp", "-aet", "DCMTK", "--max-pdu", "131072", "-od"]


def tree_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``, its reaped children and its live children."""
    user = system = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid:
            user += (int(fields[11]) + int(fields[13])) / _TICKS
            system += (int(fields[12]) + int(fields[14])) / _TICKS
        elif int(fields[1]) == pid:
            user += int(fields[11]) / _TICKS
            system += int(fields[12]) / _TICKS
    return user, system


def send(files: list[Path], port: int, ae: str, associations: int) -> tuple[float, float, float]:
    """Wall seconds and the senders' user and system CPU seconds."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    procs = [
        subprocess.Popen(
            [*_STORESCU, ae, "127.0.0.1", str(port), *map(str, files[i::associations])],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for i in range(associations)
    ]
    start = time.perf_counter()
    user = system = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise RuntimeError(f"storescu exited with status {status}")
        user += usage.ru_utime
        system += usage.ru_stime
    return time.perf_counter() - start, user, system


def start_receiver(name: str, target: Path, checkout: Path, processes: int) -> tuple[Any, int, str]:
    port = free_port()
    if name == "dcmtk":
        proc = subprocess.Popen(
            [*_STORESCP, str(target), "--fork", str(port)],
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        wait_port(port, timeout=60, process=proc)
        return proc, port, "DCMTK"
    proc = start_listener(target, port, processes, checkout=checkout)
    return proc, port, "CXR_TRIAGE"


def run(name: str, files: list[Path], target: Path, checkout: Path, associations: int) -> str:
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    total = sum(f.stat().st_size for f in files)
    warm_memory(2 * total)
    proc, port, ae = start_receiver(name, target, checkout, associations)
    try:
        before = tree_cpu(proc.pid)
        wall, send_user, send_system = send(files, port, ae, associations)
        time.sleep(0.3)  # the last handler's work is the receivers' too
        after = tree_cpu(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(target, ignore_errors=True)
    return (
        f"{total / 1e6 / wall:6.0f} MB/s  receivers user {after[0] - before[0]:.2f} "
        f"system {after[1] - before[1]:.2f}  senders user {send_user:.2f} system {send_system:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=80, help="synthetic 15 MB DX files")
    parser.add_argument("--source", type=Path, default=Path("/tmp/cxr-bench-source"))
    parser.add_argument("--target", type=Path, default=Path("/dev/shm/cxr-bench-cpu"))
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--checkout", type=Path, action="append", default=[], help="another checkout to run too"
    )
    args = parser.parse_args()
    files = make_files(args.source, args.count)
    receivers = [("dcmtk", ROOT), ("cxr-triage", ROOT)]
    receivers += [(f"cxr-triage {c}", c.resolve()) for c in args.checkout]
    for n in range(args.rounds):
        for name, checkout in receivers:
            kind = "dcmtk" if name == "dcmtk" else "ours"
            line = run(kind, files, args.target, checkout, args.associations)
            print(f"round {n + 1} {name:32} {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
