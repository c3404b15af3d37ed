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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.architectures import full_model
from models.card import ModelCard, sha256_of
from models.data import Sample, breakdown_columns, summarise
from models.features import FeatureCache, build_cache
from models.labels import LABELS
from models.lungs import load_lung_model
from models.metrics import auroc, softmax
from models.site_eval import operating_thresholds
from models.sites import SITE_COLUMN
from models.train_config import TrainConfig, dataset_and_split
from models.transfer import (
    TopConfig,
    _top,
    inputs_for,
    logits_of,
    sample_weights,
    train_top,
)

logger = logging.getLogger(__name__)

NPZ_WEIGHTS = "weights.npz"
SIZE = 224

LABEL_DEFINITIONS = (
    "The model answers what the film shows, not what the patient has. `normal`: no pneumonia "
    "on the film: healthy adults and children (Kaggle/RSNA, Kermany, NIH 'No Finding') and "
    "SIIM-FISABIO-RSNA 'Negative for Pneumonia' films (COVID-positive patients whose film "
    "shows no pneumonia). `covid`: COVID-19 pneumonia of typical appearance (Kaggle COVID "
    "folder, COVID-QU-Ex, SIIM 'Typical Appearance'); SIIM 'Atypical' and 'Indeterminate "
    "Appearance' films (COVID-positive, radiologically less specific) are never trained or "
    "calibrated on, only evaluated as COVID positives and reported apart. `pneumonia`: "
    "non-COVID pneumonia of any cause (Kermany viral in children, COVID-QU-Ex non-COVID "
    "infection, NIH 'Pneumonia')."
)


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
        balance=cfg.balance,
    )


def _sites(samples: list[Sample]) -> list[str]:
    return [s.columns.get(SITE_COLUMN, "") for s in samples]


def site_summary(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The card's short form of ``by_site_at_operating_point``: what a reader compares."""
    out = {}
    for site, f in report.get("by_site_at_operating_point", {}).items():
        pc = f["per_class"]
        out[site] = {
            "n": f["n"],
            "macro_auroc": f["macro_auroc"],
            "specificity": pc.get("normal", {}).get("specificity"),
            "false_covid_rate": f["false_covid_rate"],
            "covid_sensitivity": pc.get("covid", {}).get("sensitivity"),
            "pneumonia_sensitivity": pc.get("pneumonia", {}).get("sensitivity"),
        }
    return out


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
        samples,
        lungs,
        cfg.imagenet_weights,
        cfg.cache,
        size=SIZE,
        intensity=cfg.intensity,
        progress=cfg.progress,
    )
    return cache, lungs


def train_transfer(cfg: TrainConfig) -> ModelCard:
    from models.evaluation import by_site, evaluate_arrays, write_report
    from models.loader import save_weights_npz
    from models.plots import training_curves

    samples, all_parts = dataset_and_split(cfg)
    cache, lungs = open_cache(cfg, samples)
    parts, refused = usable(all_parts, cache)
    top_cfg = _top_config(cfg)
    model = full_model(cfg.mode, SIZE, cfg.imagenet_weights)
    x = {k: inputs_for(model, cache, cache.index_of(v), cfg.mode) for k, v in parts.items()}
    y = {k: np.array([LABELS.index(s.label) for s in v]) for k, v in parts.items()}
    loss_weights = sample_weights(y["train"], _sites(parts["train"]), cfg.balance)
    history, temperature = train_top(
        model,
        x["train"],
        y["train"],
        x["validation"],
        y["validation"],
        top_cfg,
        weights=loss_weights,
    )
    top = _top(model, cfg.mode, x["test"].shape[1:])
    val_probs = softmax(logits_of(top, x["validation"]), temperature)
    thresholds = operating_thresholds(
        val_probs, y["validation"], _sites(parts["validation"]), max_false_flag=cfg.max_false_flag
    )
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
        intensity=cfg.intensity,
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
            "lungs' bounding box with an 8% margin -> "
            + ("histogram equalised (256 bins) -> " if cfg.intensity == "equalised" else "")
            + "letterboxed (black padding, centred) to a "
            "square -> decimated then bilinear resize to 224 px -> grey repeated to RGB, scaled "
            "to [-1, 1] inside the model"
        ),
        training={
            "data": ", ".join(f"{Path(d).name}/" for d in cfg.data)
            + f" ({len(samples)} rows in their manifests)",
            "site_balance": (
                f"loss weights: each class the same in total; within a class each (site) stratum "
                f"weighs n ** -{cfg.balance}"
            ),
            "imagenet_weights": (
                "Keras's ImageNet Xception (no top), written locally by "
                "shared/tools/xception_imagenet_weights.sh from the public wheel "
                "pneumonia-model-package 0.3.0 (never downloaded at run time), SHA-256 "
                + sha256_of(cfg.imagenet_weights)  # type: ignore[arg-type]
            ),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "epochs_run": len(history.get("loss", [])),
            "trainable": "block14 + head" if cfg.mode == "ft" else "head only",
            "config": cfg.for_card(),
            "split": {k: summarise(v) for k, v in parts.items()},
            "refused_by_image_check": refused,
        },
        operating_point={
            "thresholds": thresholds,
            "max_false_flag": cfg.max_false_flag,
            "rule": (
                f"Each class's lowest threshold at which, averaged over the validation split's "
                f"sites, at most {cfg.max_false_flag:.0%} of normal films reach it."
            ),
        },
        label_definitions=LABEL_DEFINITIONS,
    )
    columns = breakdown_columns(parts["test"])
    report = evaluate_arrays(y["test"], test_probs, list(LABELS), columns)
    report["split"] = "internal test (held out from training and calibration)"
    report["shortcut_probe"] = shortcut_probe(test_probs, parts["test"])
    report["operating_point"] = thresholds
    report["by_site_at_operating_point"] = by_site(parts["test"], y["test"], test_probs, thresholds)
    write_report(report, y["test"], test_probs, list(LABELS), cfg.out / "evaluation")
    card.metrics = {k: report[k] for k in ("n", "accuracy", "macro_auroc", "ece")}
    card.metrics["shortcut_probe"] = report["shortcut_probe"]
    card.metrics["by_site_at_operating_point"] = site_summary(report)
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


def crossval(cfg: TrainConfig, column: str, sites: list[str] | None = None) -> dict[str, Any]:
    """Leave-one-``column``-value-out for Xception ``cfg.mode`` on cached features.

    ``column == "site"`` holds out whole hospitals with their normals (``leave_one_site_out``);
    any other column keeps the per-class view of :func:`models.transfer.leave_one_out`.
    """
    from models.transfer import leave_one_out, leave_one_site_out

    samples, parts = dataset_and_split(cfg)
    cache, _ = open_cache(cfg, samples)
    if column == SITE_COLUMN:
        result = leave_one_site_out(
            samples,
            parts,
            cache,
            lambda: full_model(cfg.mode, SIZE, cfg.imagenet_weights),
            _top_config(cfg),
            max_false_flag=cfg.max_false_flag,
            sites=sites,
        )
        result["arch"] = "xception"
        return result
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
