"""CPU of the node's database work outside the listener: one study-monitor pass and one
instance row, back to back and after the thread has slept.

A benchmark, not a test: nothing asserts on the numbers. It builds a node on SQLite in a
temporary directory (nothing listens), records one association, and times with
``time.thread_time()``. Run from the repository root:

    .venv/bin/python -m bench.database_cpu --repeat 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable


def cpu_ms(work: Callable[[], object], repeat: int, gap: float) -> float:
    """Median thread CPU of ``work`` in ms, sleeping ``gap`` seconds before each call."""
    times = []
    for _ in range(repeat):
        time.sleep(gap)
        start = time.thread_time()
        work()
        times.append((time.thread_time() - start) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        os.environ.update(CXR_DATA_DIR=data, CXR_METRICS_PORT="0")
        from dicom_node.eligibility import Decision
        from dicom_node.interfaces import PeerInfo, ReceivedInstance
        from worker.node_service import build_node
        from worker.settings import Settings

        node = build_node(Settings())
        store = node.receipts
        assoc = store.association_started(PeerInfo("BENCH", "CXR_TRIAGE", "127.0.0.1", 1))
        decision = Decision(True, "view-position", "PA")
        counter = iter(range(10**9))

        def instance_row() -> None:
            i = next(counter)
            store.instance_received(
                ReceivedInstance(
                    assoc, "1.2.3.4", "1.2.3.4.5", f"1.2.3.4.5.{i}", "1.2.840.10008.5.1.4.1.1.1.1",
                    "1.2.840.10008.1.2.1", "DX", "ACC", "PID", f"s/{i}.dcm", 15_000_000, decision,
                )
            )  # fmt: skip

        monitor_pass = node.monitor.run_once if node.monitor is not None else None
        assert monitor_pass is not None
        first = cpu_ms(monitor_pass, 1, 0.0)  # compiles the statements
        instance_row()
        print(f"first completion pass: {first:.1f} ms of CPU")
        print(f"{'work':<22} {'back to back':>13} {'1 s apart':>10}  (ms of CPU, median)")
        for name, work in (("completion pass", monitor_pass), ("instance row", instance_row)):
            warm = cpu_ms(work, args.repeat, 0.0)
            idle = cpu_ms(work, max(3, args.repeat // 4), 1.0)
            print(f"{name:<22} {warm:13.2f} {idle:10.2f}")
        node.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
