"""Evaluating a model folder on a labelled dataset (``cxr-triage evaluate``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.data import list_dataset
from models.imaging import load_image, prepare
from models.loader import LoadedModel
from models.metrics import breakdown, classification_report, softmax


def evaluate_arrays(
    y: np.ndarray, probs: np.ndarray, labels: list[str], columns: dict[str, list[str]]
) -> dict[str, Any]:
    """The full report: pooled metrics and the same metrics for every manifest column."""
    report = classification_report(y, probs, labels)
    report["labels"] = labels
    report["by_column"] = breakdown(y, probs, labels, columns)
    return report


def write_report(
    report: dict[str, Any], y: np.ndarray, probs: np.ndarray, labels: list[str], plots: Path
) -> None:
    """Write ``evaluation.json`` and the PNG plots into ``plots``."""
    from models import plots as p

    plots.mkdir(parents=True, exist_ok=True)
    (plots / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    p.confusion(report["confusion_matrix"], labels, plots / "confusion_matrix.png")
    p.roc(y, probs, labels, report, plots / "roc.png")
    p.reliability(report, plots / "reliability.png")
    if report["by_column"]:
        p.groups(report["by_column"], labels, plots / "by_group.png")


def evaluate_folder(
    model: LoadedModel, data: Path, *, batch_size: int = 32, progress: bool = True
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run ``model`` over a folder-per-label dataset; return (report, y, probs)."""
    samples = list_dataset(data, tuple(model.labels))
    size = model.card.input_size
    logits = []
    for i in tqdm(
        range(0, len(samples), batch_size),
        desc="evaluating",
        unit="batch",
        disable=not progress,
        file=sys.stderr,
    ):
        chunk = samples[i : i + batch_size]
        batch = np.stack([prepare(load_image(s.path), size)[0] for s in chunk])
        logits.append(model.logits(batch))
    probs = softmax(np.concatenate(logits), model.card.temperature)
    y = np.array([model.labels.index(s.label) for s in samples])
    columns = {
        c: [s.columns.get(c, "") for s in samples]
        for c in sorted({c for s in samples for c in s.columns})
    }
    report = evaluate_arrays(y, probs, model.labels, columns)
    report["model"] = {
        "name": model.card.name,
        "version": model.card.version,
        "weights_sha256": model.card.weights_sha256,
    }
    report["data"] = str(data)
    return report, y, probs
