"""``cxr-triage compile-model``: compile a model folder for LiteRT ahead of the first start."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile-model",
        help="compile the model for LiteRT, so workers start without TensorFlow",
        description=(
            "Compile the model folder (CXR_MODEL_DIR, the shipped default without it) and its "
            "lung model into the compiled-model cache (CXR_MODEL_CACHE), checking the compiled "
            "graphs against TensorFlow first. A worker does this itself on its first start; run "
            "it when building an image or after installing a new model, so no start pays for it."
        ),
    )
    p.add_argument("--model", type=Path, help="model folder (default: CXR_MODEL_DIR)")
    p.add_argument("--cache", type=Path, help="cache folder (default: CXR_MODEL_CACHE)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.card import ModelCardError
    from models.compiled import (
        CompiledModelError,
        default_cache,
        ensure_compiled,
        runtime_available,
    )
    from models.loader import load_model

    if not runtime_available():
        print("cxr-triage compile-model: LiteRT is not installed (pip install ai-edge-litert)")
        return 2
    cache = args.cache or settings.model.model_cache or default_cache()
    started = time.monotonic()
    try:
        model = load_model(args.model or settings.model.model_dir)
        compiled = ensure_compiled(model.card, model.keras_model, model.lungs, cache)
    except (ModelCardError, CompiledModelError) as exc:
        print(f"cxr-triage compile-model: {exc}", file=sys.stderr)
        return 2
    manifest = compiled.manifest
    size = sum((compiled.folder / name).stat().st_size for name in manifest["files"])
    worst = max(manifest["max_difference_from_tensorflow"].values())
    print(
        f"{model.card.name} {model.card.version}: {compiled.folder} ({size / 1e6:.0f} MB, "
        f"compiled {manifest['compiled_at']}, largest difference from TensorFlow {worst:.1g}) "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 0
