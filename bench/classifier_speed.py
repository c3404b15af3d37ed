"""CPU time per image: preprocessing a 2500x3000 16-bit DX, prediction and Grad-CAM.

    .venv/bin/python -m bench.classifier_speed

For the shipped default model and for Xception at 299x299 (random weights: the same arithmetic
as ImageNet-initialised ones). Prediction is timed three ways: a compiled ``tf.function`` (what
the product serves through), ``model.predict`` and an eager call; Grad-CAM through its compiled
function (probabilities and heatmap from one call). Prints the median of --repeat runs after
warm-up, in milliseconds. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def time_model(
    name: str, model: Any, size: int, layer: str, image: Any, repeat: int
) -> list[tuple[str, float]]:
    import tensorflow as tf

    from models.gradcam import gradcam_function
    from models.imaging import prepare

    x, _ = prepare(image, size)
    batch = x[None]
    compiled = tf.function(lambda a: model(a, training=False))
    cam = gradcam_function(model, layer)
    return [
        (f"{name}: letterbox + resize to {size}", median_ms(lambda: prepare(image, size), repeat)),
        (
            f"{name}: predict, compiled tf.function",
            median_ms(lambda: compiled(tf.constant(batch)), repeat),
        ),
        (
            f"{name}: predict, model.predict",
            median_ms(lambda: model.predict(batch, verbose=0), repeat),
        ),
        (f"{name}: predict, eager call", median_ms(lambda: model(batch, training=False), repeat)),
        (f"{name}: probabilities + Grad-CAM, compiled", median_ms(lambda: cam(batch), repeat)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    import tensorflow as tf

    from dicom_node import synthetic
    from models.architectures import build_model, gradcam_layer
    from models.imaging import dicom_to_image, load_image
    from models.loader import load_model, load_serving

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; "
        f"TensorFlow {tf.__version__}; median of {args.repeat}"
    )
    ds = synthetic.radiograph(rows=2500, columns=3000, bits=16, seed=1)
    encoded = ds.PixelData
    image = dicom_to_image(ds)

    def decode() -> object:
        ds.PixelData = encoded  # drop pydicom's cached array: decode again each time
        return dicom_to_image(ds)

    print(f"{'step':44} {'ms/image':>9}")
    print(
        f"{'decode + modality/VOI, 2500x3000 16-bit DX':44} {median_ms(decode, args.repeat):>9.1f}"
    )

    default = load_model()
    candidates = [
        (
            "default " + default.card.name,
            default.keras_model,
            default.card.input_size,
            default.card.gradcam_layer,
        )
    ]
    xception = build_model("xception", "scratch", 299, 3)
    candidates.append(("xception 299", xception, 299, gradcam_layer("xception")))
    for name, model, size, layer in candidates:
        for label, ms in time_model(name, model, size, layer, image, args.repeat):
            print(f"{label:44} {ms:>9.1f}", flush=True)
    # What a worker does per image: image check (lung model), lung crop, classifier, Grad-CAM
    # mapped back to the source at the SC's size (shrink 2 for a 2500x3000 film at 1280 px);
    # with TensorFlow, and compiled for LiteRT as a worker serves it (CXR_MODEL_RUNTIME=auto).
    served = load_serving(runtime="litert")
    for runtime, model in (("TensorFlow", default), ("LiteRT", served)):
        full = median_ms(
            partial(model.predict, [image], heatmaps=True, heatmap_shrink=3), args.repeat
        )
        print(f"{f'default ({runtime}): check + crop + predict + CAM':44} {full:>9.1f}", flush=True)
        # The same for a batch of studies waiting together (one model call): per image.
        for n in (8, 32):
            images = [image] * n
            ms = median_ms(
                partial(model.predict, images, heatmaps=True, heatmap_shrink=3),
                max(3, args.repeat // 2),
            )
            print(f"{f'  same, batch of {n}, per image':44} {ms / n:>9.1f}", flush=True)
    for name in ("cr_pa_chest_jpeg_baseline.dcm", "dx_chest_no_view_tags.dcm"):
        path = ROOT.parent / "shared" / "data" / "dicom" / name
        if path.is_file():
            real = load_image(path)
            ms = median_ms(partial(default.predict, [real], heatmaps=True), args.repeat)
            print(f"{'  same, ' + name[:34]:44} {ms:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
