"""What associations held open and idle cost the listener: CPU seconds per second.

A PACS may keep associations open between studies. This starts ``cxr-triage listen`` on a
free port on 127.0.0.1, opens N associations (C-ECHO context), holds them idle for --seconds
and prints the listener's user and system CPU over that time (``/proc/PID/stat``). A
benchmark, not a test: nothing asserts on the numbers. Run from the repository root:

    .venv/bin/python -m bench.idle_associations --associations 0 4 16 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.receive_throughput import wait_listening
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def measure(associations: int, seconds: float, data_dir: Path) -> tuple[float, float]:
    """The listener's (user, system) CPU seconds per second with ``associations`` idle."""
    from pynetdicom import AE

    port = free_port()
    env = {
        **os.environ,
        "CXR_DATA_DIR": str(data_dir),
        "CXR_PORT": str(port),
        "CXR_METRICS_PORT": "0",
        "CXR_MAX_ASSOCIATIONS": str(max(16, associations)),
        "CXR_LOG_LEVEL": "INFO",  # wait_listening reads it
    }
    log = data_dir / "listen.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", "listen"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    held = []
    try:
        wait_listening(proc, log, 1)
        ae = AE("BENCH_IDLE")
        ae.add_requested_context("1.2.840.10008.1.1")
        for _ in range(associations):
            assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
            if not assoc.is_established:
                raise RuntimeError("the listener refused an association")
            held.append(assoc)
        time.sleep(1.0)  # the associations' set-up is not what is measured
        user0, sys0 = cpu_seconds(proc.pid)
        time.sleep(seconds)
        user1, sys1 = cpu_seconds(proc.pid)
        return (user1 - user0) / seconds, (sys1 - sys0) / seconds
    finally:
        for assoc in held:
            assoc.release()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, nargs="+", default=[0, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(f"{'associations':>12} {'user s/s':>9} {'system s/s':>10} {'% of a core':>11}")
    for count in args.associations:
        with tempfile.TemporaryDirectory(prefix="cxr-idle-") as tmp:
            user, system = measure(count, args.seconds, Path(tmp))
        print(f"{count:>12} {user:>9.3f} {system:>10.3f} {100 * (user + system):>10.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
