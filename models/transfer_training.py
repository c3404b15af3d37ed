"""``cxr-triage train --arch xception --mode ec|ft`` and ``cxr-triage crossval``: the transfer path.

Reads the dataset and its seeded split, computes (or reuses) the lung-cropped feature cache,
trains the top, calibrates on the validation split, evaluates on the held-out test split (by
source and age group, with the shortcut probe) and writes a model folder whose weights are
float16 ``weights.npz`` (the full Xception is 83 MB in float32).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.card import ModelCard, sha256_of
from models.data import Sample, summarise
from models.features import FeatureCache, build_cache
from models.labels import LABELS
from models.lungs import load_lung_model
from models.metrics import auroc, softmax
from models.training import TrainConfig, dataset_and_split
from models.transfer import TopConfig, _top, full_model, inputs_for, logits_of, train_top

logger = logging.getLogger(__name__)

NPZ_WEIGHTS = "weights.npz"
SIZE = 224


def shortcut_probe(
    probs: np.ndarray, samples: list[Sample], column: str = "age_group"
) -> dict[str, Any]:
    """Among normal images: how well each output tells children from adults (AUROC).

    0.5 means the output carries no age information among healthy patients; the 1.x default
    scored 0.73 with P(viral pneumonia).
    """
    normal = np.array([s.label == "normal" for s in samples])
    child = np.array([s.columns.get(column) == "pediatric" for s in samples])
    out: dict[str, Any] = {
        "n_children": int((normal & child).sum()),
        "n_adults": int((normal & ~child).sum()),
    }
    for k, label in enumerate(LABELS):
        auc = auroc(child[normal].astype(int), probs[normal, k]) if normal.any() else None
        out[f"auroc_child_from_p_{label}"] = auc
        if normal.any() and (normal & child).any() and (normal & ~child).any():
            out[f"mean_p_{label}_children"] = float(probs[normal & child, k].mean())
            out[f"mean_p_{label}_adults"] = float(probs[normal & ~child, k].mean())
    return out


def _top_config(cfg: TrainConfig) -> TopConfig:
    return TopConfig(
        mode=cfg.mode,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        patience=cfg.patience,
        seed=cfg.seed,
        progress=cfg.progress,
    )


def usable(
    parts: dict[str, list[Sample]], cache: FeatureCache
) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """Drop the images the image check refuses (serving would refuse them too); count them."""
    kept: dict[str, list[Sample]] = {}
    refused: dict[str, dict[str, int]] = {}
    for name, items in parts.items():
        ok = cache.ok[cache.index_of(items)] if items else np.zeros(0, bool)
        kept[name] = [s for s, good in zip(items, ok, strict=True) if good]
        counts = Counter(
            f"{s.columns.get('source', '')}/{s.label}"
            for s, good in zip(items, ok, strict=True)
            if not good
        )
        if counts:
            refused[name] = dict(counts)
    return kept, refused


def open_cache(cfg: TrainConfig, samples: list[Sample]) -> tuple[FeatureCache, Any]:
    lungs = load_lung_model(cfg.lung_model)
    assert cfg.imagenet_weights is not None  # check_request made sure
    cache = build_cache(
        samples, lungs, cfg.imagenet_weights, cfg.cache, size=SIZE, progress=cfg.progress
    )
    return cache, lungs


def train_transfer(cfg: TrainConfig) -> ModelCard:
    from models.evaluation import evaluate_arrays, write_report
    from models.loader import save_weights_npz
    from models.plots import training_curves

    samples, all_parts = dataset_and_split(cfg)
    cache, lungs = open_cache(cfg, samples)
    parts, refused = usable(all_parts, cache)
    top_cfg = _top_config(cfg)
    model = full_model(cfg.mode, SIZE, cfg.imagenet_weights)
    x = {k: inputs_for(model, cache, cache.index_of(v), cfg.mode) for k, v in parts.items()}
    y = {k: np.array([LABELS.index(s.label) for s in v]) for k, v in parts.items()}
    history, temperature = train_top(
        model, x["train"], y["train"], x["validation"], y["validation"], top_cfg
    )
    top = _top(model, cfg.mode, x["test"].shape[1:])
    test_probs = softmax(logits_of(top, x["test"]), temperature)

    weights = cfg.out / NPZ_WEIGHTS
    save_weights_npz(model, weights)
    (cfg.out / "model.keras").unlink(missing_ok=True)
    card = ModelCard(
        name=cfg.name,
        version=cfg.version,
        architecture="xception",
        mode=cfg.mode,
        labels=list(LABELS),
        input_size=SIZE,
        channels=1,
        normalisation="tf",
        gradcam_layer="block14_sepconv2_act",
        temperature=temperature,
        crop="lungs",
        lung_model={
            "name": lungs.card.name,
            "version": lungs.card.version,
            "weights_sha256": lungs.card.weights_sha256,
        },
        weights_file=NPZ_WEIGHTS,
        weights_sha256=sha256_of(weights),
        preprocessing=(
            "DICOM: Modality LUT, VOI LUT or window (percentile 0.5-99.5 when absent, full range "
            "for 8-bit), MONOCHROME1 inverted; PNG/JPEG: luminance, /255 or percentile window for "
            "16-bit; lung model (letterboxed 128 px U-Net) -> image check -> crop to the two "
            "lungs' bounding box with an 8% margin -> letterboxed (black padding, centred) to a "
            "square -> decimated then bilinear resize to 224 px -> grey repeated to RGB, scaled "
            "to [-1, 1] inside the model"
        ),
        training={
            "data": f"{Path(cfg.data).name}/ ({len(samples)} rows in its manifest)",
            "imagenet_weights": (
                "Keras's ImageNet Xception (no top), written locally by "
                "shared/tools/xception_imagenet_weights.sh from the public wheel "
                "pneumonia-model-package 0.3.0 (never downloaded at run time), SHA-256 "
                + sha256_of(cfg.imagenet_weights)  # type: ignore[arg-type]
            ),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "epochs_run": len(history.get("loss", [])),
            "trainable": "block14 + head" if cfg.mode == "ft" else "head only",
            "config": {
                k: (Path(v).name if isinstance(v, Path) else v)
                for k, v in asdict(cfg).items()
                if k not in ("out", "cache", "progress")
            },
            "split": {k: summarise(v) for k, v in parts.items()},
            "refused_by_image_check": refused,
        },
    )
    columns = {
        c: [s.columns.get(c, "") for s in parts["test"]]
        for c in sorted({c for s in parts["test"] for c in s.columns})
    }
    report = evaluate_arrays(y["test"], test_probs, list(LABELS), columns)
    report["split"] = "internal test (held out from training and calibration)"
    report["shortcut_probe"] = shortcut_probe(test_probs, parts["test"])
    write_report(report, y["test"], test_probs, list(LABELS), cfg.out / "evaluation")
    card.metrics = {k: report[k] for k in ("n", "accuracy", "macro_auroc", "ece")}
    card.metrics["shortcut_probe"] = report["shortcut_probe"]
    card.metrics["by_column"] = {
        col: {g: {"n": r["n"], "accuracy": r["accuracy"]} for g, r in groups.items()}
        for col, groups in report["by_column"].items()
    }
    card.save(cfg.out)
    with open(cfg.out / "history.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        keys = list(history)
        writer.writerow(["epoch", *keys])
        for i in range(len(history.get("loss", []))):
            writer.writerow([i, *(history[k][i] for k in keys)])
    training_curves(history, cfg.out / "training_curves.png")
    shutil.rmtree(cfg.out / "backup", ignore_errors=True)
    logger.info("wrote %s (test accuracy %.3f)", cfg.out, report["accuracy"])
    return card


def crossval(cfg: TrainConfig, column: str) -> dict[str, Any]:
    """Leave-one-``column``-value-out for Xception ``cfg.mode`` on cached features."""
    from models.transfer import leave_one_out

    samples, parts = dataset_and_split(cfg)
    cache, _ = open_cache(cfg, samples)
    result = leave_one_out(
        samples,
        parts,
        cache,
        column,
        lambda: full_model(cfg.mode, SIZE, cfg.imagenet_weights),
        _top_config(cfg),
    )
    result["arch"] = "xception"
    return result


def write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
