"""Evaluating a model folder on a labelled dataset (``cxr-triage evaluate``)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.data import Sample, breakdown_columns, list_datasets, read_split
from models.imaging import is_colour, read_image
from models.labels import canonical
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


def by_site(
    samples: list[Sample], y: np.ndarray, probs: np.ndarray, thresholds: dict[str, float]
) -> dict[str, Any]:
    """:func:`models.site_eval.site_figures` for every site (manifest ``site``) of ``samples``."""
    from models.site_eval import site_figures
    from models.sites import SITE_COLUMN

    sites = np.array([s.columns.get(SITE_COLUMN, "") for s in samples])
    sources = np.array([s.columns.get("source", "") for s in samples])
    return {
        site: site_figures(
            probs[sites == site],
            y[sites == site],
            thresholds,
            sources=sources[sites == site].tolist(),
        )
        for site in sorted(set(sites.tolist()))
        if site
    }


#: DICOM attributes a hospital's results are broken down by (``validate``).
HEADER_BREAKDOWN = ("ViewPosition", "Modality", "Manufacturer")


@dataclass
class Scored:
    """The files the model classified (with logits), and those it refused, with the reason."""

    samples: list[Sample]
    logits: np.ndarray
    y: np.ndarray
    attributes: dict[str, list[str]]  # HEADER_BREAKDOWN attribute -> value per classified file
    refused: list[tuple[Sample, str]]
    features: np.ndarray | None = None  # pooled features per classified file (familiarity)

    def novelty(self, model: LoadedModel) -> np.ndarray | None:
        """Each classified file's distance to the training data over the limit (no index: None)."""
        if model.familiarity is None or self.features is None:
            return None
        return model.familiarity.novelty(self.features)

    def probs(self, temperature: float) -> np.ndarray:
        return softmax(self.logits, temperature)


def _read(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """Display values and the breakdown attributes, from one read of the file."""
    image, ds = read_image(path)
    if ds is None:
        return image, {a: "(not DICOM)" for a in HEADER_BREAKDOWN}
    return image, {a: str(ds.get(a, "") or "").strip() or "(none)" for a in HEADER_BREAKDOWN}


def score(
    model: LoadedModel,
    samples: list[Sample],
    *,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "scoring",
) -> Scored:
    """Every file through the serving path (image check, lung crop, classifier), in batches.

    Raises ``UnreadableImageError`` naming the first file that cannot be read.
    """
    labels = [canonical(x) for x in model.labels]
    logits, features, kept, refused = [], [], [], []
    attributes: dict[str, list[str]] = {a: [] for a in HEADER_BREAKDOWN}
    for start in tqdm(
        range(0, len(samples), batch_size),
        desc=desc,
        unit="batch",
        disable=not progress,
        file=sys.stderr,
    ):
        chunk = samples[start : start + batch_size]
        read = [_read(s.path) for s in chunk]
        reasons, chunk_logits, chunk_features = model.checked_logits(
            [image for image, _ in read], [is_colour(s.path) for s in chunk]
        )
        logits.append(chunk_logits)
        if chunk_features is not None:
            features.append(chunk_features)
        for sample, (_, values), reason in zip(chunk, read, reasons, strict=True):
            if reason is not None:
                refused.append((sample, reason))
                continue
            kept.append(sample)
            for a in HEADER_BREAKDOWN:
                attributes[a].append(values[a])
    y = np.array([labels.index(s.label) for s in kept], int)
    all_logits = np.concatenate(logits) if logits else np.zeros((0, len(labels)))
    pooled = np.concatenate(features) if features else None
    return Scored(kept, all_logits, y, attributes, refused, pooled)


def evaluate_folder(
    model: LoadedModel,
    data: Path | list[Path],
    *,
    split: Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    thresholds: dict[str, float] | None = None,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Run ``model`` over folder-per-label datasets; return (report, y, probs).

    With ``thresholds`` (the operating point) the report adds each site's figures at them.

    With ``split`` (a model folder's ``split.csv``) only that split's test images are used, so
    two models can be compared on the same held-out images. Every image takes the serving path:
    the image check (colour, lungs), the lung crop, the classifier. Refused images are not
    scored; the report counts them by label under ``refused_by_image_check`` (with up to 20
    reasons), since serving would not classify them.
    """
    folders = data if isinstance(data, list) else [data]
    samples = list_datasets(folders, tuple(canonical(x) for x in model.labels))
    if split is not None:
        samples = read_split(split, samples)["test"]
    scored = score(model, samples, batch_size=batch_size, progress=progress, desc="evaluating")
    kept, y = scored.samples, scored.y
    if not kept:
        raise ValueError(f"the image check refused all {len(samples)} images of {data}")
    probs = scored.probs(model.card.temperature)
    labels = [canonical(x) for x in model.labels]
    refused: dict[str, int] = {}
    for sample, _ in scored.refused:
        refused[sample.label] = refused.get(sample.label, 0) + 1
    reasons = [f"{sample.key}: {reason}" for sample, reason in scored.refused[:20]]
    columns = breakdown_columns(kept)
    report = evaluate_arrays(y, probs, labels, columns)
    report["refused_by_image_check"] = {
        "n": sum(refused.values()),
        "by_label": refused,
        "examples": reasons,
    }
    report["model"] = {
        "name": model.card.name,
        "version": model.card.version,
        "weights_sha256": model.card.weights_sha256,
    }
    report["data"] = ", ".join(str(f) for f in folders)
    if thresholds is not None:
        report["operating_point"] = dict(thresholds)
        report["by_site_at_operating_point"] = by_site(kept, y, probs, thresholds)
    return report, y, probs
