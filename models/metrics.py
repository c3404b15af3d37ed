"""Classification metrics with bootstrap confidence intervals, calibration, and breakdowns.

Numpy and scikit-learn only. Every breakdown uses the same functions as the pooled figures, so a
shortcut (children vs adults, one hospital vs another) shows up as a gap between groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """ECE of the top-class confidence, with the reliability-diagram bins."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for i in range(bins):
        mask = (conf > edges[i]) & (conf <= edges[i + 1])
        if i == 0:
            mask |= conf == 0
        n = int(mask.sum())
        if n:
            acc, mean_conf = float(correct[mask].mean()), float(conf[mask].mean())
            ece += n / len(y) * abs(acc - mean_conf)
            rows.append(
                {
                    "low": float(edges[i]),
                    "high": float(edges[i + 1]),
                    "n": n,
                    "accuracy": acc,
                    "confidence": mean_conf,
                }
            )
    return {"ece": float(ece), "bins": rows}


def auroc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of ``score`` for the binary labels ``y_bin``; None when only one class is present."""
    if len(y_bin) == 0 or y_bin.min() == y_bin.max():
        return None  # one class only: undefined
    from sklearn.metrics import roc_auc_score  # 0.6 s to import: not on a worker's start

    return float(roc_auc_score(y_bin, score))


def _percentile_ci(
    statistic: Callable[[np.ndarray], float | None], n: int, n_boot: int, rng: np.random.Generator
) -> tuple[float, float] | None:
    """95% percentile-bootstrap CI of ``statistic(case indices)`` (None if mostly undefined)."""
    values = []
    for _ in range(n_boot):
        v = statistic(rng.integers(0, n, n))
        if v is not None:
            values.append(v)
    if len(values) < n_boot // 2:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def auroc_ci(
    y_bin: np.ndarray, score: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[float, float] | None:
    """95% percentile-bootstrap CI of :func:`auroc` over cases (None if mostly undefined)."""
    return _percentile_ci(lambda idx: auroc(y_bin[idx], score[idx]), len(y_bin), n_boot, rng)


def _bootstrap_ci(
    y: np.ndarray, probs: np.ndarray, k: int, n_boot: int, rng: np.random.Generator
) -> tuple[float, float] | None:
    if k >= 0:
        return auroc_ci((y == k).astype(int), probs[:, k], n_boot, rng)
    return _percentile_ci(lambda idx: _macro(y[idx], probs[idx]), len(y), n_boot, rng)


def _macro(y: np.ndarray, probs: np.ndarray) -> float | None:
    scores = [auroc((y == k).astype(int), probs[:, k]) for k in range(probs.shape[1])]
    defined = [s for s in scores if s is not None]
    return float(np.mean(defined)) if len(defined) == probs.shape[1] else None


def classification_report(
    y: np.ndarray, probs: np.ndarray, labels: list[str], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy, per-class sensitivity/specificity/PPV/NPV/F1/AUROC, macro AUROC, ECE.

    AUROC is one-vs-rest; its 95% CI is a percentile bootstrap over cases (``n_boot`` resamples,
    0 to skip). A metric whose denominator is empty is None, not 0.
    """
    y = np.asarray(y, int)
    probs = np.asarray(probs, np.float64)
    pred = probs.argmax(axis=1)
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y, pred, labels=list(range(len(labels))))
    rng = np.random.default_rng(seed)
    per_class: dict[str, Any] = {}
    for k, label in enumerate(labels):
        tp = int(cm[k, k])
        fn = int(cm[k].sum() - tp)
        fp = int(cm[:, k].sum() - tp)
        tn = int(cm.sum() - tp - fn - fp)

        def ratio(a: int, b: int) -> float | None:
            return a / b if b else None

        sens, ppv = ratio(tp, tp + fn), ratio(tp, tp + fp)
        f1 = 2 * sens * ppv / (sens + ppv) if sens is not None and ppv and (sens + ppv) else None
        per_class[label] = {
            "n": tp + fn,
            "sensitivity": sens,
            "specificity": ratio(tn, tn + fp),
            "ppv": ppv,
            "npv": ratio(tn, tn + fn),
            "f1": f1,
            "auroc": auroc((y == k).astype(int), probs[:, k]),
            "auroc_ci95": _bootstrap_ci(y, probs, k, n_boot, rng) if n_boot else None,
        }
    calibration = expected_calibration_error(probs, y)
    return {
        "n": len(y),
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "macro_auroc": _macro(y, probs),
        "macro_auroc_ci95": _bootstrap_ci(y, probs, -1, n_boot, rng) if n_boot else None,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "ece": calibration["ece"],
        "reliability": calibration["bins"],
    }


def breakdown(
    y: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    columns: dict[str, list[str]],
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The same report for every value of every column (``{"source": [...per case...]}``)."""
    out: dict[str, dict[str, Any]] = {}
    y, probs = np.asarray(y), np.asarray(probs)
    for column, values in columns.items():
        arr = np.asarray(values)
        out[column] = {}
        for group in sorted(set(values)):
            mask = arr == group
            out[column][group] = classification_report(
                y[mask], probs[mask], labels, n_boot=n_boot, seed=seed
            )
    return out
