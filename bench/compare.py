"""The numbers of docs/performance.md in one run: receive MB/s against dcmtk and Orthanc, then
the pipeline (time to ready, first result, latency percentiles, batched throughput), then the
first result after `cxr-triage run` starts.

    .venv/bin/python -m bench.compare --count 80 --repeat 5 --studies 20 --concurrency 2

Receiving: ``bench/receive_throughput.py`` (the same synthetic 15 MB DX files sent by dcmtk
``storescu`` to each receiver in turn, every one at its defaults first; best of ``--repeat``
runs; ratios to dcmtk from this run). Pipeline: ``bench/pipeline_latency.py``. From ``run`` to
the first result: ``bench/first_result.py``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys

from bench import first_result, pipeline_latency, receive_throughput


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    receive_throughput.add_arguments(parser)
    pipeline_latency.add_arguments(parser)
    first_result.add_arguments(parser)
    args = parser.parse_args()
    print(
        f"{datetime.date.today()}; machine: {platform.node()} "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    files = receive_throughput.make_files(args.source, args.count)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"\nreceiving {len(files)} files, {total_mb:.0f} MB, best of {args.repeat}, "
        f"target {args.target}, memory {'cold' if args.cold else 'warmed'} before each run, "
        f"sent by {args.sender} storescu; every receiver at its defaults unless it says tuned"
    )
    rows = receive_throughput.measure(
        files,
        args.target,
        repeat=args.repeat,
        processes=args.processes,
        orthanc=not args.no_orthanc and shutil.which("Orthanc") is not None,
        warm=not args.cold,
        sender=args.sender,
    )
    receive_throughput.print_rows(rows)
    print("\npipeline")
    pipeline_latency.print_result(
        pipeline_latency.measure(args.studies, args.concurrency, args.batch_size, args.log_level)
    )
    print("\nfrom `cxr-triage run` to the first result (defaults, 1 s quiet period)")
    first_result.print_result(first_result.measure(args.first_repeat, args.runtime), args.runtime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
