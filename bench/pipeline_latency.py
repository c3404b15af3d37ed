"""Study completion -> SC and SR accepted by the PACS: latency and sustained throughput.

    .venv/bin/python bench/pipeline_latency.py --studies 20 --burst 20

Starts dcmtk ``storescp`` as the PACS, then ``cxr-triage listen`` and ``cxr-triage work`` (one
worker process, the default model) on Redis (127.0.0.1:6379, database 15) and SQLite in a
temporary folder. Latency: single-image studies (synthetic 2500x3000 16-bit DX) sent one at a
time; each is measured from the study's ``completed_at`` to its last delivery accepted by the
PACS. Throughput: ``--burst`` studies sent at once; studies per minute from the first completion
to the last delivery. Also prints the mean time of each pipeline step. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.receive_throughput import free_port, wait_port  # noqa: E402
from dicom_node import synthetic  # noqa: E402

CLI = [sys.executable, "-m", "worker.cli.main"]


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _rows(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql, args).fetchall())


def _latency(db: Path, uid: str) -> float | None:
    rows = _rows(
        db,
        """
        select s.state, s.completed_at, max(d.at) from studies s
        join produced_objects o on o.study_id = s.id
        join deliveries d on d.object_id = o.id and d.outcome = 'delivered'
        where s.study_instance_uid = ? group by s.id""",
        uid,
    )
    if not rows or rows[0][0] != "done":
        return None
    return _ts(rows[0][2]) - _ts(rows[0][1])


def _wait(db: Path, uids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_latency(db, u) is not None for u in uids):
            return
        time.sleep(0.05)
    raise TimeoutError("results did not arrive in time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20, help="sequential single studies")
    parser.add_argument("--burst", type=int, default=20, help="studies sent at once")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cxr-latency-"))
    files = []
    for i in range(args.studies + args.burst):
        ds = synthetic.radiograph(rows=2500, columns=3000, bits=16, seed=i)
        files.append((ds.StudyInstanceUID, synthetic.write(ds, work / "in" / f"{i}.dcm")))
    pacs_port, node_port = free_port(), free_port()
    (work / "pacs").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(work / "data"),
        CXR_PORT=str(node_port),
        CXR_MIN_FREE_MB="0",
        CXR_BROKER_URL=args.redis,
        CXR_QUIET_SECONDS="0.2",
        CXR_MONITOR_INTERVAL="0.05",
        CXR_DESTINATIONS=f"PACS@127.0.0.1:{pacs_port}",
        CXR_LOG_LEVEL="WARNING",
    )
    subprocess.run([*CLI, "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["redis-cli", "-u", args.redis, "flushdb"], check=True, stdout=subprocess.DEVNULL
    )
    procs = [
        subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(work / "pacs"), str(pacs_port)],
            env={**os.environ, "TCP_NODELAY": "1"},
        ),
        subprocess.Popen([*CLI, "listen"], env=env),
        subprocess.Popen([*CLI, "work", "--concurrency", "1"], env=env),
    ]
    db = work / "data" / "cxr-triage.sqlite"
    try:
        wait_port(pacs_port)
        wait_port(node_port)
        send = [*CLI, "send", "--quiet", "--to", f"CXR_TRIAGE@127.0.0.1:{node_port}"]
        # Warm-up: the worker loads the model and compiles its functions on the first study.
        warm = synthetic.write(
            synthetic.radiograph(rows=2500, columns=3000, bits=16, seed=999), work / "warm.dcm"
        )
        subprocess.run([*send, str(warm)], env=env, check=True, stdout=subprocess.DEVNULL)
        _wait(db, [str(_rows(db, "select study_instance_uid from studies")[0][0])], 300)

        latencies = []
        for uid, path in files[: args.studies]:
            subprocess.run([*send, str(path)], env=env, check=True, stdout=subprocess.DEVNULL)
            _wait(db, [uid], 120)
            latencies.append(_latency(db, uid) or 0.0)
        burst = files[args.studies :]
        subprocess.run(
            [*send, *[str(p) for _, p in burst]], env=env, check=True, stdout=subprocess.DEVNULL
        )
        uids = [u for u, _ in burst]
        _wait(db, uids, 600)
        marks = ",".join("?" * len(uids))
        ((first, last),) = _rows(
            db,
            f"""
            select min(s.completed_at), max(d.at) from studies s
            join produced_objects o on o.study_id = s.id
            join deliveries d on d.object_id = o.id
            where s.study_instance_uid in ({marks})""",
            *uids,
        )
        minutes = (_ts(last) - _ts(first)) / 60
        steps = _rows(db, "select step, avg(seconds), count(*) from step_timings group by step")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)

    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"one worker process; 2500x3000 16-bit DX, one image per study"
    )
    print(
        f"latency completion -> SC+SR accepted, {len(latencies)} studies: "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    print(f"burst of {len(uids)} studies: {len(uids) / minutes:.1f} studies/minute")
    for step, mean, n in steps:
        print(f"  step {step:16} mean {mean * 1000:7.1f} ms  (n={n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
