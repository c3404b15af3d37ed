"""Worker start to first result; latency percentiles; throughput of 1, 8 and 32 queued studies.

    .venv/bin/python -m bench.pipeline_latency --studies 20 --concurrency 1 --batch-size 8

Starts dcmtk ``storescp`` as the PACS, a private ``redis-server`` on a free loopback port, then
``cxr-triage listen`` and ``cxr-triage work`` (the default model) on SQLite in a temporary
folder, with synthetic 2500x3000 16-bit DX, one image per study. It reports

- how long the worker takes to be ready (``/readyz``: model loaded and warmed up);
- the first study sent after that: completion (``completed_at``, after the quiet period) to the
  last delivery accepted by the PACS;
- the same latency for ``--studies`` studies sent one at a time (p50, p95, max);
- throughput for bursts of 1, 8 and 32 studies sent in one association: studies per second
  from the first completion to the last delivery, and the batch sizes the worker used;
- the mean time of each pipeline step.

A benchmark, not a test: nothing asserts on the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dicom_node import synthetic
from tests.services import free_port, wait_port

CLI = [sys.executable, "-m", "worker.cli.main"]
BURSTS = (1, 8, 32)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _rows(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as conn:
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


def _timeline(db: Path, uid: str) -> list[tuple[str, float]]:
    """Where a study's time went: each state it entered and each pipeline step, in ms."""
    events = _rows(
        db,
        """
        select e.to_state, e.at from study_events e join studies s on s.id = e.study_id
        where s.study_instance_uid = ? order by e.id""",
        uid,
    )
    start = next(_ts(at) for state, at in events if state == "complete")
    out = [(f"-> {state}", (_ts(at) - start) * 1000) for state, at in events if _ts(at) >= start]
    steps = _rows(
        db,
        """
        select t.step, t.seconds from step_timings t join studies s on s.id = t.study_id
        where s.study_instance_uid = ? order by t.id""",
        uid,
    )
    return out + [(f"step {step}", seconds * 1000) for step, seconds in steps]


def _ready(port: int, timeout: float) -> float:
    """Seconds until the worker's /readyz says ready."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if json.load(r)["ready"]:
                    return time.monotonic() - start
        except OSError:
            pass  # not listening yet, or 503 (HTTPError is an OSError)
        time.sleep(0.1)
    raise TimeoutError("the worker did not become ready")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Burst:
    studies: int
    seconds: float
    batched: int
    latencies: list[float]


@dataclass
class PipelineResult:
    concurrency: int
    batch_size: int
    ready_after: float
    first: float
    first_timeline: list[tuple[str, float]]
    latencies: list[float]
    bursts: list[Burst]
    steps: list[tuple[str, float, int]]
    failed: int  # moves to failed: each one is a bug or a fault to look into
    claimed_again: int  # processing -> processing: a worker took over a study being processed


def measure(
    studies: int, concurrency: int, batch_size: int, log_level: str = "WARNING"
) -> PipelineResult:
    """Start the PACS, Redis, node and worker; measure; stop everything."""
    args = argparse.Namespace(
        studies=studies, concurrency=concurrency, batch_size=batch_size, log_level=log_level
    )
    work = Path(tempfile.mkdtemp(prefix="cxr-latency-"))
    counts = [*BURSTS, args.studies + 1]  # +1: the first study after start
    files: list[tuple[str, Path]] = []
    for i in range(sum(counts)):
        ds = synthetic.radiograph(rows=2500, columns=3000, bits=16, seed=i)
        files.append((ds.StudyInstanceUID, synthetic.write(ds, work / "in" / f"{i}.dcm")))
    pacs_port, node_port, redis_port, ready_port = (free_port() for _ in range(4))
    (work / "pacs").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(work / "data"),
        CXR_PORT=str(node_port),
        CXR_MIN_FREE_MB="0",
        CXR_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        CXR_QUIET_SECONDS="0.2",
        CXR_MONITOR_INTERVAL="0.05",
        CXR_DESTINATIONS=f"PACS@127.0.0.1:{pacs_port}",
        CXR_BATCH_SIZE=str(args.batch_size),
        CXR_METRICS_PORT="0",
        CXR_WORKER_METRICS_PORT=str(ready_port),
        CXR_LOG_LEVEL=args.log_level,
    )
    subprocess.run([*CLI, "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
    redis = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    procs = [
        subprocess.Popen([*redis, "--appendonly", "no"], stdout=subprocess.DEVNULL),
        subprocess.Popen(
            ["storescp", "-aet", "PACS", "-od", str(work / "pacs"), str(pacs_port)],
            env={**os.environ, "TCP_NODELAY": "1"},
        ),
    ]
    db = work / "data" / "cxr-triage.sqlite"
    send = [*CLI, "send", "--quiet", "--to", f"CXR_TRIAGE@127.0.0.1:{node_port}"]

    def send_files(paths: list[Path]) -> None:
        subprocess.run([*send, *map(str, paths)], env=env, check=True, stdout=subprocess.DEVNULL)

    try:
        wait_port(redis_port, process=procs[0])
        wait_port(pacs_port, process=procs[1])
        procs.append(subprocess.Popen([*CLI, "listen"], env=env))
        procs.append(
            subprocess.Popen([*CLI, "work", "--concurrency", str(args.concurrency)], env=env)
        )
        wait_port(node_port, process=procs[2])  # its log is this bench's own output
        ready_after = _ready(ready_port, 300)
        (first_uid, first_path), *rest = files[: args.studies + 1]
        send_files([first_path])
        _wait(db, [first_uid], 120)
        first = _latency(db, first_uid) or 0.0
        first_path_taken = _timeline(db, first_uid)

        latencies = []
        for uid, path in rest:
            send_files([path])
            _wait(db, [uid], 120)
            latencies.append(_latency(db, uid) or 0.0)

        throughput = []
        at = args.studies + 1
        for size in BURSTS:
            burst = files[at : at + size]
            at += size
            send_files([p for _, p in burst])
            uids = [u for u, _ in burst]
            _wait(db, uids, 600)
            marks = ",".join("?" * len(uids))
            ((start, end),) = _rows(
                db,
                f"""
                select min(s.completed_at), max(d.at) from studies s
                join produced_objects o on o.study_id = s.id
                join deliveries d on d.object_id = o.id
                where s.study_instance_uid in ({marks})""",
                *uids,
            )
            batched = _rows(
                db,
                f"""
                select count(*) from study_events e join studies s on s.id = e.study_id
                where s.study_instance_uid in ({marks}) and e.detail like 'batched with%'""",
                *uids,
            )[0][0]
            seconds = _ts(end) - _ts(start)
            per_study = [_latency(db, u) or 0.0 for u in uids]
            throughput.append((size, seconds, batched, per_study))
        steps = _rows(db, "select step, avg(seconds), count(*) from step_timings group by step")
        failed = _rows(db, "select count(*) from study_events where to_state = 'failed'")[0][0]
        claimed_again = _rows(
            db,
            "select count(*) from study_events "
            "where from_state = 'processing' and to_state = 'processing'",
        )[0][0]
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        shutil.rmtree(work, ignore_errors=True)  # about 2 GB of images, spool and results

    return PipelineResult(
        args.concurrency,
        args.batch_size,
        ready_after,
        first,
        first_path_taken,
        latencies,
        [Burst(*t) for t in throughput],
        steps,
        failed,
        claimed_again,
    )


def print_result(r: PipelineResult) -> None:
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{r.concurrency} worker process(es), CXR_BATCH_SIZE={r.batch_size}; "
        f"2500x3000 16-bit DX, one image per study"
    )
    print(f"worker ready (model loaded and warmed up) {r.ready_after:.1f} s after start")
    print(f"first study after ready: completion -> SC+SR accepted in {r.first * 1000:.0f} ms")
    print("  " + ", ".join(f"{name} {ms:.0f}" for name, ms in r.first_timeline))
    print(
        f"latency, {len(r.latencies)} studies one at a time: "
        f"p50 {statistics.median(r.latencies) * 1000:.0f} ms, "
        f"p95 {_percentile(r.latencies, 0.95) * 1000:.0f} ms, "
        f"max {max(r.latencies) * 1000:.0f} ms"
    )
    for b in r.bursts:
        print(
            f"burst of {b.studies:2} studies: {b.studies / b.seconds:5.2f} studies/s "
            f"({60 * b.studies / b.seconds:5.0f}/min), {b.batched} taken into a batch; latency "
            f"p50 {statistics.median(b.latencies) * 1000:.0f} ms, "
            f"p95 {_percentile(b.latencies, 0.95) * 1000:.0f} ms"
        )
    for step, mean, n in r.steps:
        print(f"  step {step:16} mean {mean * 1000:7.1f} ms  (n={n})")
    # Not timings, but a run with either is not a run to quote: say so next to the numbers.
    print(f"moves to failed: {r.failed}; studies claimed again while processed: {r.claimed_again}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--studies", type=int, default=20, help="studies sent one at a time")
    parser.add_argument("--concurrency", type=int, default=1, help="worker processes")
    parser.add_argument("--batch-size", type=int, default=8, help="CXR_BATCH_SIZE")
    parser.add_argument("--log-level", default="WARNING", help="CXR_LOG_LEVEL of the processes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    print_result(measure(args.studies, args.concurrency, args.batch_size, args.log_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
