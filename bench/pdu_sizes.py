"""Which maximum PDU should the listener advertise? One association, each sender at its own
defaults, our listener (fsync, otherwise as shipped) advertising each size in turn:

    .venv/bin/python -m bench.pdu_sizes --count 80 --repeat 3

dcmtk's storescu sends PDUs of at most 128 KiB whatever the receiver allows (Orthanc is built
on dcmtk and does the same); pynetdicom's sends PDUs as large as the receiver advertises. The
shipped default (``CXR_MAX_PDU``, 1 MiB) is the size this table favours. A benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from pathlib import Path

from bench.receive_throughput import SENDERS, make_files, run_ours, warm_memory
from worker.settings import NodeSettings

SIZES = (16_384, 65_536, 131_072, 262_144, 1_048_576, 4_194_304)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=80, help="synthetic 15 MB DX files")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per size")
    parser.add_argument("--source", type=Path, default=Path("/tmp/cxr-bench-source"))
    parser.add_argument("--target", type=Path, default=Path("/dev/shm/cxr-bench"))
    args = parser.parse_args()
    files = make_files(args.source, args.count)
    total = sum(f.stat().st_size for f in files)
    shipped = NodeSettings.model_fields["max_pdu"].default
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{len(files)} files, {total / 1e6:.0f} MB, best of {args.repeat}, one association"
    )
    print("| advertised max PDU | " + " | ".join(f"{s} storescu MB/s" for s in SENDERS) + " |")
    print("|---|" + "---|" * len(SENDERS))
    for size in SIZES:
        rates = []
        for sender in SENDERS:
            best = float("inf")
            for _ in range(args.repeat):
                shutil.rmtree(args.target, ignore_errors=True)
                warm_memory(2 * total)
                best = min(best, run_ours(files, args.target, 1, fsync=True, max_pdu=size,
                                          sender=sender))  # fmt: skip
            shutil.rmtree(args.target, ignore_errors=True)
            rates.append(f"{total / 1e6 / best:.0f}")
        mark = " (shipped)" if size == shipped else ""
        print(f"| {size}{mark} | " + " | ".join(rates) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
