"""Where a worker process's start goes, before it can take its first study.

A benchmark, not a test: nothing asserts on the numbers. Each run is a fresh interpreter that
does what a `cxr-triage work` child does after the fork (`worker.tasks._Process.warm_up`), one
step at a time, and times each step: import the runtime (TensorFlow, or LiteRT's interpreter);
load the shipped model (classifier, lung model, familiarity index, card checks); the model's
first inference with Grad-CAM on a synthetic 1700×1400 radiograph (graph tracing included with
TensorFlow); then `Pipeline.warm_up` as the worker calls it, which now finds the model warm, so
what it adds is the SC and SR builders' first run and one warm inference.

``--runtime litert`` (the default, as `CXR_MODEL_RUNTIME=auto` serves) compiles the model into a
temporary cache once before the timed runs (`cxr-triage compile-model`, timed and reported
apart), as a worker's first start on a host would. Run from the repository root:

    .venv/bin/python -m bench.warm_start --repeat 3
    .venv/bin/python -m bench.warm_start --repeat 3 --runtime tensorflow
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from worker.db.engine import open_database
from worker.settings import load_settings

# The child: prints one JSON object of seconds per step.
_CHILD = r"""
import json, sys, time
from pathlib import Path
steps = {}
data, runtime, cache = sys.argv[1], sys.argv[2], Path(sys.argv[3])
t = time.perf_counter()
if runtime == "tensorflow":
    import tensorflow  # noqa: F401
else:
    import ai_edge_litert.interpreter  # noqa: F401
steps[f"import the runtime ({runtime})"] = time.perf_counter() - t

t = time.perf_counter()
from models.loader import load_serving
model = load_serving(runtime=runtime, cache=cache)
assert model.engine.name == runtime, model.engine.name
steps["load the model (classifier, lungs, index, card)"] = time.perf_counter() - t

from dicom_node.synthetic import radiograph
from models.imaging import dicom_to_image, shrink_factor
from worker.db.engine import make_engine, make_session_factory
from worker.pipeline import Pipeline
from worker.settings import load_settings

settings = load_settings(data_dir=data)
ds = radiograph(rows=1400, columns=1700, bits=16, seed=1)
image = dicom_to_image(ds)
t = time.perf_counter()
model.warm_up(image, shrink_factor(image.shape, settings.worker.sc_max_size))
steps["first inference + Grad-CAM (tracing with TensorFlow)"] = time.perf_counter() - t

engine = make_engine(settings.storage.effective_database_url)
pipeline = Pipeline(settings, make_session_factory(engine), model)
t = time.perf_counter()
pipeline.warm_up()
steps["Pipeline.warm_up after that (SC + SR first build)"] = time.perf_counter() - t
print(json.dumps(steps))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes (default 3)")
    parser.add_argument("--runtime", choices=("litert", "tensorflow"), default="litert")
    args = parser.parse_args()
    env = {"TF_CPP_MIN_LOG_LEVEL": "3", **os.environ}
    cache = tempfile.TemporaryDirectory()
    if args.runtime == "litert":
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "worker.cli.main", "compile-model", "--cache", cache.name],
            check=True,
            capture_output=True,
            timeout=600,
            env=env,
        )
        print(f"compiled once in {time.perf_counter() - t:.1f} s (not in the runs)")
    runs: list[dict[str, float]] = []
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory() as data:
            # The schema exists before a worker starts (`run` and `db upgrade` make it).
            open_database(load_settings(data_dir=data)).dispose()
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, data, args.runtime, cache.name],
                capture_output=True,
                text=True,
                timeout=600,
                env=env,
            )
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"run {n + 1} of {args.repeat}: {sum(runs[-1].values()):.2f} s", file=sys.stderr)
    print(f"{'step':<56} {'median s':>9} {'min s':>7}")
    for step in runs[0]:
        values = [r[step] for r in runs]
        print(f"{step:<56} {statistics.median(values):9.2f} {min(values):7.2f}")
    totals = [sum(r.values()) for r in runs]
    print(f"{'total':<56} {statistics.median(totals):9.2f} {min(totals):7.2f}")
    cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
