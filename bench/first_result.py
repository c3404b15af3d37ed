"""From `cxr-triage run` to the first result in the PACS, at the product's defaults.

    .venv/bin/python -m bench.first_result --first-repeat 3

Each run starts dcmtk ``storescp`` as the PACS, then ``cxr-triage run`` with nothing configured
but a fresh data folder (SQLite and the embedded broker), its port, the PACS as destination and
a 1 s quiet period (``CXR_QUIET_SECONDS=1``). As soon as the node accepts connections, dcmtk
``storescu`` (at its defaults, TCP_NODELAY=1) sends one synthetic 2500x3000 16-bit DX study, as a
modality that was waiting would. The run ends when the PACS has both results (the Grad-CAM SC
and the SR). Reported, in seconds after ``run`` started: the node accepting, the study sent,
``run``'s "ready" log line (worker warm), and both results in the PACS.

The compiled model (``CXR_MODEL_CACHE``) is what a host has after its first start: by default
the user's cache, compiled before the runs if missing (the time that takes is reported apart);
``--runtime tensorflow`` measures the TensorFlow worker instead. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dicom_node import synthetic
from tests.services import free_port, log_tail, wait_port

CLI = [sys.executable, "-m", "worker.cli.main"]
STORESCU = "/usr/bin/storescu"


def _env(work: Path, port: int, pacs_port: int, runtime: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(
        CXR_DATA_DIR=str(work / "data"),
        CXR_PORT=str(port),
        CXR_DESTINATIONS=f"PACS@127.0.0.1:{pacs_port}",
        CXR_QUIET_SECONDS="1",
        CXR_MODEL_RUNTIME=runtime,
        # Free ports, not 9110/9111: another instance on this host must not fail the run.
        CXR_METRICS_PORT=str(free_port()),
        CXR_WORKER_METRICS_PORT=str(free_port()),
        CXR_MIN_FREE_MB="0",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    return env


def one_run(study: Path, runtime: str, timeout: float) -> dict[str, float]:
    """Seconds after ``run`` started at which each milestone was seen."""
    with tempfile.TemporaryDirectory(prefix="cxr-first-") as tmp:
        work = Path(tmp)
        (work / "pacs").mkdir()
        port, pacs_port = free_port(), free_port()
        pacs = subprocess.Popen(
            ["/usr/bin/storescp", "-aet", "PACS", "-od", str(work / "pacs"), str(pacs_port)],
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        log = work / "run.log"
        proc: subprocess.Popen[bytes] | None = None
        try:
            wait_port(pacs_port, process=pacs)
            with log.open("wb") as out:
                started = time.monotonic()
                proc = subprocess.Popen(
                    [*CLI, "run"],
                    env=_env(work, port, pacs_port, runtime),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            marks: dict[str, float] = {}
            wait_port(port, timeout, process=proc, log=log)
            marks["node accepting"] = time.monotonic() - started
            subprocess.run(
                [STORESCU, "-aec", "CXR_TRIAGE", "127.0.0.1", str(port), str(study)],
                check=True,
                env={**os.environ, "TCP_NODELAY": "1"},
                timeout=60,
            )
            marks["study sent"] = time.monotonic() - started
            deadline = started + timeout
            while time.monotonic() < deadline:
                if "run logs ready" not in marks and re.search(r"\bready in\b", log.read_text()):
                    marks["run logs ready"] = time.monotonic() - started
                if len(list((work / "pacs").iterdir())) >= 2:
                    marks["SC and SR in the PACS"] = time.monotonic() - started
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"cxr-triage run exited:\n{log_tail(log)}")
                time.sleep(0.01)
            else:
                raise TimeoutError(f"no result in {timeout} s:\n{log_tail(log)}")
            if "run logs ready" not in marks:
                marks["run logs ready"] = float("nan")
            return marks
        finally:
            for p in (proc, pacs):
                if p is not None and p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()


def measure(repeat: int, runtime: str, timeout: float = 120.0) -> list[dict[str, float]]:
    """``repeat`` runs; with LiteRT the model is compiled into the cache first if missing."""
    if runtime == "auto":
        t = time.monotonic()
        subprocess.run([*CLI, "compile-model"], check=True, capture_output=True, timeout=600)
        seconds = time.monotonic() - t
        print(f"cxr-triage compile-model: {seconds:.1f} s (it compiles only what the cache lacks)")
    with tempfile.TemporaryDirectory() as tmp:
        ds = synthetic.radiograph(rows=2500, columns=3000, bits=16, seed=7)
        study = synthetic.write(ds, Path(tmp) / "study.dcm")
        runs = []
        for n in range(repeat):
            runs.append(one_run(study, runtime, timeout))
            line = ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items())
            print(f"run {n + 1} of {repeat}: {line}", file=sys.stderr)
    return runs


def print_result(runs: list[dict[str, float]], runtime: str) -> None:
    print(f"runtime {runtime}; seconds after `cxr-triage run` started, {len(runs)} runs")
    print(f"{'milestone':<24} {'median':>7} {'min':>7} {'max':>7}")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:<24} {statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--first-repeat", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--runtime", choices=("auto", "tensorflow"), default="auto")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    args = parser.parse_args()
    print_result(measure(args.first_repeat, args.runtime, args.timeout), args.runtime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
