"""Judging a model by hospitals it has not seen: operating thresholds, per-site figures, probe.

A triage flag is only as good as its false positives at a new hospital. Each site here holds
healthy and abnormal films (:mod:`models.sites`), so a held-out site shows both sides:

* :func:`operating_thresholds` picks the flag threshold of each abnormal class on validation
  data, site by site, so that on average over sites at most ``max_false_flag`` of the normal
  films reach it (every site counts the same, however many films it has);
* :func:`site_figures` says, for the films of one site, the macro AUROC (one-vs-rest among the
  classes the site holds), sensitivity and specificity **at those thresholds**, the share of
  normals flagged COVID-19, and the ECE;
* :func:`site_probe` asks whether the flag score still tells one site's healthy films from
  another's (AUROC; 0.5 = it does not: the model does not read the hospital).

Pure numpy: the same functions serve ``crossval --by site``, ``evaluate`` and ``validate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.labels import LABELS
from models.metrics import auroc, auroc_ci, expected_calibration_error

#: The classes that raise a flag, most severe first (``normal`` never does).
FLAGGED = tuple(label for label in LABELS if label != "normal")
NORMAL = LABELS.index("normal")


def flags(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """(N, len(LABELS)) bool: whether each image reaches each class's flag threshold."""
    out = np.zeros(probs.shape, bool)
    for label in FLAGGED:
        k = LABELS.index(label)
        out[:, k] = probs[:, k] >= thresholds[label]
    return out


def operating_thresholds(
    probs: np.ndarray, y: np.ndarray, sites: Sequence[str], *, max_false_flag: float = 0.05
) -> dict[str, float]:
    """Per flagged class, the lowest threshold whose site-averaged false-flag rate is in bounds.

    The false-flag rate of class k at threshold t is the share of a site's **normal** films with
    P(k) ≥ t, averaged over the sites that have normals. Raises ``ValueError`` without normals.
    """
    sites_arr = np.asarray(sites)
    normal = np.asarray(y) == NORMAL
    with_normals = sorted(set(sites_arr[normal]))
    if not with_normals:
        raise ValueError("operating thresholds need normal films")
    out: dict[str, float] = {}
    for label in FLAGGED:
        k = LABELS.index(label)
        scores = [probs[normal & (sites_arr == s), k] for s in with_normals]
        # Candidate thresholds: every normal's score (just above it), from high to low.
        candidates = np.unique(np.concatenate(scores))
        best = 1.0
        for t in candidates[::-1]:
            cut = float(np.nextafter(t, 1.0))
            rate = float(np.mean([(sc >= cut).mean() for sc in scores]))
            if rate > max_false_flag:
                break
            best = cut
        # Rounded up to 6 decimals for the card: never flags more than the bound allows.
        out[label] = min(math.ceil(best * 1e6) / 1e6, 1.0)
    return out


def _rate(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


def site_figures(
    probs: np.ndarray,
    y: np.ndarray,
    thresholds: dict[str, float],
    *,
    sources: Sequence[str] | None = None,
    n_boot: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of one site's films at ``thresholds`` (see the module text)."""
    y = np.asarray(y, int)
    rng = np.random.default_rng(seed)
    flagged = flags(probs, thresholds)
    any_flag = np.asarray(flagged.any(axis=1), bool)
    present = sorted({int(v) for v in y})
    per_class: dict[str, Any] = {}
    aucs = []
    for k in present:
        label = LABELS[k]
        pos = y == k
        yy = pos.astype(int)
        a = auroc(yy, probs[:, k])
        entry: dict[str, Any] = {
            "n": int(pos.sum()),
            "auroc": a,
            "auroc_ci95": auroc_ci(yy, probs[:, k], n_boot, rng) if n_boot and a else None,
        }
        if label == "normal":
            entry["specificity"] = _rate(~any_flag[pos])  # no flag of any kind
            for other in FLAGGED:
                entry[f"flagged_{other}"] = _rate(flagged[pos, LABELS.index(other)])
        else:
            entry["sensitivity"] = _rate(flagged[pos, k])  # flagged as this class
            entry["flagged_any"] = _rate(any_flag[pos])
        per_class[label] = entry
        if a is not None:
            aucs.append(a)
    out: dict[str, Any] = {
        "n": len(y),
        "classes": [LABELS[k] for k in present],
        "macro_auroc": float(np.mean(aucs)) if len(aucs) == len(present) and aucs else None,
        "per_class": per_class,
        "false_covid_rate": per_class.get("normal", {}).get("flagged_covid"),
        "ece": expected_calibration_error(probs, y)["ece"] if len(y) else None,
        "thresholds": dict(thresholds),
    }
    if sources is not None:
        src = np.asarray(sources)
        out["covid_sensitivity_by_source"] = {
            s: _rate(flagged[(src == s) & (y == LABELS.index("covid")), LABELS.index("covid")])
            for s in sorted(set(src[y == LABELS.index("covid")]))
        }
    return out


def site_probe(
    probs: np.ndarray, y: np.ndarray, sites: Sequence[str], target: str
) -> dict[str, Any]:
    """Among normals: how well P(COVID-19) and the any-flag score tell ``target``'s from the rest.

    AUROC of "this normal film is from ``target``"; 0.5 = the score carries nothing of the site.
    Reported as max(AUROC, 1 - AUROC) too, since a site read either way is a shortcut.
    """
    sites_arr = np.asarray(sites)
    normal = np.asarray(y) == NORMAL
    is_target = (sites_arr[normal] == target).astype(int)
    out: dict[str, Any] = {
        "site": target,
        "n_site": int(is_target.sum()),
        "n_other": int(len(is_target) - is_target.sum()),
    }
    for name, score in (
        ("p_covid", probs[normal, LABELS.index("covid")]),
        ("flag_score", 1.0 - probs[normal, NORMAL]),
    ):
        a = auroc(is_target, score)
        out[name] = a
        out[f"{name}_either_way"] = None if a is None else max(a, 1 - a)
    return out
