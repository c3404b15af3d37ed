"""A hospital checks the model on its own labelled studies (``cxr-triage validate``, ``calibrate``).

No public figure tells a hospital how the model does on its own scanners and patients; only its
own labelled films can. :func:`models.evaluation.score` runs every file through the serving
path (image check, lung crop, classifier) and keeps what a breakdown needs from each DICOM
header (view, modality, manufacturer); :func:`validation_report` gives sensitivity and
specificity with 95% CIs at the thresholds in force, ROC, calibration, the confusion matrix at
the triage decision, the refusals and the same per view/modality/manufacturer;
:func:`write_validation` writes it as JSON and a self-contained HTML page.
:func:`site_thresholds` picks thresholds for a target sensitivity or specificity on the same
data, for ``calibrate``.

Everything is checked before anything is written: a file that cannot be read, a set with only
one class, or labels the model does not know stop the run with one line.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from models.data import DatasetError, Sample
from models.evaluation import Scored
from models.labels import DISPLAY, LABELS
from models.metrics import auroc, auroc_ci, expected_calibration_error, fit_temperature
from models.site_eval import FLAGGED, NORMAL, flags


def data_digest(samples: list[Sample]) -> str:
    """SHA-256 over the labelled files' names, labels and bytes: what a calibration was made on."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        digest.update(f"{s.path.name}\0{s.label}\0".encode())
        digest.update(hashlib.sha256(s.path.read_bytes()).digest())
    return digest.hexdigest()


def check_classes(samples: list[Sample]) -> None:
    """A validation needs normal films and at least one flagged class: else a one-line error."""
    present = {s.label for s in samples}
    if "normal" not in present or not present & set(FLAGGED):
        raise DatasetError(
            f"only {', '.join(sorted(present))} films: validating needs normal films and "
            f"films of at least one of {', '.join(FLAGGED)}"
        )


def wilson(k: int, n: int) -> tuple[float, float] | None:
    """95% Wilson score interval of k successes in n (None when n is 0)."""
    if n == 0:
        return None
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _proportion(mask: np.ndarray) -> dict[str, Any]:
    k, n = int(mask.sum()), len(mask)
    return {"value": k / n if n else None, "k": k, "n": n, "ci95": wilson(k, n)}


def decided(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """The triage label per image: the most severe flagged class (worker.decision's rule)."""
    flagged = flags(probs, thresholds)
    out = np.full(len(probs), NORMAL)
    for label in reversed(FLAGGED):  # most severe last, so it wins
        k = LABELS.index(label)
        out[flagged[:, k]] = k
    return out


def operating_figures(
    y: np.ndarray, probs: np.ndarray, thresholds: dict[str, float]
) -> dict[str, Any]:
    """Sensitivity per flagged class and specificity (no flag on a normal), with Wilson CIs."""
    flagged = flags(probs, thresholds)
    normal = y == NORMAL
    out: dict[str, Any] = {"specificity": _proportion(~flagged[normal].any(axis=1))}
    for label in FLAGGED:
        k = LABELS.index(label)
        if (y == k).any():
            out[f"sensitivity_{label}"] = _proportion(flagged[y == k, k])
        out[f"false_{label}_rate"] = _proportion(flagged[normal, k])
    return out


def validation_report(
    scored: Scored,
    thresholds: dict[str, float],
    temperature: float,
    *,
    n_boot: int = 500,
    novelty: np.ndarray | None = None,
) -> dict[str, Any]:
    """The figures of a local validation at ``thresholds`` (see the module text)."""
    y, probs = scored.y, scored.probs(temperature)
    rng = np.random.default_rng(0)
    present = sorted({int(v) for v in y})
    per_class = {}
    for k in present:
        yy = (y == k).astype(int)
        a = auroc(yy, probs[:, k])
        per_class[LABELS[k]] = {
            "n": int(yy.sum()),
            "auroc": a,
            "auroc_ci95": auroc_ci(yy, probs[:, k], n_boot, rng) if a is not None else None,
        }
    decision = decided(probs, thresholds)
    confusion = [
        [int(((y == i) & (decision == j)).sum()) for j in range(len(LABELS))]
        for i in range(len(LABELS))
    ]
    calibration = expected_calibration_error(probs, y) if len(y) else {"ece": None, "bins": []}
    breakdown: dict[str, dict[str, Any]] = {}
    for attribute, values in scored.attributes.items():
        arr = np.array(values)
        breakdown[attribute] = {
            value: {
                "n": int((arr == value).sum()),
                **operating_figures(y[arr == value], probs[arr == value], thresholds),
            }
            for value in sorted(set(values))
        }
    refusals: dict[str, int] = {}
    for _, reason in scored.refused:
        refusals[reason] = refusals.get(reason, 0) + 1
    return {
        "n_files": len(scored.samples) + len(scored.refused),
        "n_classified": len(y),
        "labels": list(LABELS),
        "by_label": {LABELS[k]: int((y == k).sum()) for k in present},
        "thresholds": dict(thresholds),
        "temperature": temperature,
        "per_class": per_class,
        "at_thresholds": operating_figures(y, probs, thresholds),
        "confusion_matrix_at_decision": confusion,
        "ece": calibration["ece"],
        "reliability": calibration["bins"],
        "refused": {
            "n": len(scored.refused),
            "by_reason": refusals,
            "files": [str(s.path) for s, _ in scored.refused][:50],
        },
        "by_attribute": breakdown,
        "low_confidence": _low_confidence(y, probs, thresholds, novelty),
    }


def _low_confidence(
    y: np.ndarray, probs: np.ndarray, thresholds: dict[str, float], novelty: np.ndarray | None
) -> dict[str, Any] | None:
    """How many films the model calls unlike its training data, and the figures at the
    thresholds with and without them (None: the model has no familiarity index)."""
    if novelty is None:
        return None
    low = novelty > 1.0
    return {
        "n": int(low.sum()),
        "share": float(low.mean()) if len(low) else None,
        "at_thresholds_low_confidence": operating_figures(y[low], probs[low], thresholds),
        "at_thresholds_usual_confidence": operating_figures(y[~low], probs[~low], thresholds),
    }


def site_thresholds(
    y: np.ndarray,
    probs: np.ndarray,
    *,
    target_sensitivity: float | None = None,
    target_specificity: float | None = None,
    current: dict[str, float],
) -> dict[str, float]:
    """Per flagged class: the threshold that meets the target on these films.

    ``target_sensitivity``: the highest threshold at which at least that share of the class's
    films reach it. ``target_specificity``: the lowest threshold at which at most
    1 - target of the normal films reach it. A class with no films here keeps ``current``.
    """
    if (target_sensitivity is None) == (target_specificity is None):
        raise ValueError("give exactly one of a target sensitivity or a target specificity")
    out = dict(current)
    normal = y == NORMAL
    for label in FLAGGED:
        k = LABELS.index(label)
        if target_sensitivity is not None:
            scores = np.sort(probs[y == k, k])[::-1]
            if not len(scores):
                continue
            need = max(1, math.ceil(target_sensitivity * len(scores)))
            out[label] = float(math.floor(scores[need - 1] * 1e6) / 1e6)
        else:
            assert target_specificity is not None
            scores = np.sort(probs[normal, k])[::-1]
            allowed = math.floor((1 - target_specificity) * len(scores))
            # Just above the (allowed + 1)-th highest normal: at most ``allowed`` reach it.
            edge = scores[allowed] if allowed < len(scores) else 0.0
            out[label] = float(min(1.0, math.floor(edge * 1e6) / 1e6 + 1e-6))
    return out


def refit_temperature(scored: Scored) -> float:
    return fit_temperature(scored.logits, scored.y)


# ------------------------------------------------------------------------ the written report


def _png(draw: Callable[[Path], Any], folder: Path, name: str) -> str:
    path = folder / name
    draw(path)
    return base64.b64encode(path.read_bytes()).decode()


def _fmt_prop(p: dict[str, Any]) -> str:
    if p.get("value") is None:
        return "–"
    ci = p["ci95"]
    return (
        f"{100 * p['value']:.1f}% ({p['k']}/{p['n']}; 95% CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f}%)"
    )


def write_validation(
    report: dict[str, Any], scored: Scored, out: Path, *, title: str
) -> list[Path]:
    """``validation.json``, ``validation.html`` (plots inside) and the plots as PNG in ``out``."""
    from models import plots

    out.mkdir(parents=True, exist_ok=True)
    probs = scored.probs(report["temperature"])
    images = {
        "roc": _png(lambda p: plots.roc(scored.y, probs, list(LABELS), report, p), out, "roc.png"),
        "reliability": _png(lambda p: plots.reliability(report, p), out, "reliability.png"),
        "confusion": _png(
            lambda p: plots.confusion(
                report["confusion_matrix_at_decision"],
                list(LABELS),
                p,
                "At the triage decision (thresholds in force)",
            ),
            out,
            "confusion_matrix.png",
        ),
    }
    (out / "validation.json").write_text(json.dumps(report, indent=2) + "\n")
    at = report["at_thresholds"]
    rows = [("Specificity (normal films with no flag)", _fmt_prop(at["specificity"]))]
    for label in FLAGGED:
        if f"sensitivity_{label}" in at:
            rows.append((f"Sensitivity, {DISPLAY[label]}", _fmt_prop(at[f"sensitivity_{label}"])))
        rows.append(
            (f"Normal films flagged {DISPLAY[label]}", _fmt_prop(at[f"false_{label}_rate"]))
        )
    auc_rows = [
        (
            DISPLAY[label],
            c["n"],
            "–"
            if c["auroc"] is None
            else f"{c['auroc']:.3f}"
            + (f" ({c['auroc_ci95'][0]:.3f}–{c['auroc_ci95'][1]:.3f})" if c["auroc_ci95"] else ""),
        )
        for label, c in report["per_class"].items()
    ]
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:left}img{max-width:30em}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p><b>Not for diagnostic use.</b> Figures on this hospital's own labelled films, "
        "at the thresholds in force: "
        + esc(", ".join(f"{DISPLAY[k]} ≥ {v:.3f}" for k, v in report["thresholds"].items()))
        + f"; temperature {report['temperature']:.3f}.</p>",
        f"<p>{report['n_files']} files, {report['n_classified']} classified ("
        + esc(", ".join(f"{DISPLAY[k]} {v}" for k, v in report["by_label"].items()))
        + f"), {report['refused']['n']} refused by the image check"
        + (
            f", {low['n']} called low confidence (unlike the model's training data).</p>"
            if (low := report.get("low_confidence"))
            else ".</p>"
        ),
        "<h2>At the thresholds</h2><table>",
        *(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td></tr>" for a, b in rows),
        "</table><h2>AUROC, one class against the rest</h2><table><tr><th>class</th><th>n</th>"
        "<th>AUROC (95% CI)</th></tr>",
        *(f"<tr><td>{esc(a)}</td><td>{b}</td><td>{esc(c)}</td></tr>" for a, b, c in auc_rows),
        f"</table><p>Expected calibration error: {report['ece']:.3f}</p>"
        if report["ece"] is not None
        else "</table>",
        *(f"<img alt='{k}' src='data:image/png;base64,{v}'>" for k, v in images.items()),
    ]
    for attribute, groups in report["by_attribute"].items():
        parts.append(
            f"<h2>By {esc(attribute)}</h2><table><tr><th>value</th><th>n</th>"
            "<th>specificity</th><th>COVID-19 sensitivity</th><th>pneumonia sensitivity</th></tr>"
        )
        for value, g in groups.items():
            cells = [_fmt_prop(g["specificity"])] + [
                _fmt_prop(g[f"sensitivity_{c}"]) if f"sensitivity_{c}" in g else "–"
                for c in FLAGGED
            ]
            parts.append(
                f"<tr><td>{esc(value)}</td><td>{g['n']}</td>"
                + "".join(f"<td>{esc(c)}</td>" for c in cells)
                + "</tr>"
            )
        parts.append("</table>")
    if report["refused"]["n"]:
        parts.append("<h2>Refused by the image check</h2><ul>")
        parts += [f"<li>{esc(r)}: {n}</li>" for r, n in report["refused"]["by_reason"].items()]
        parts.append("</ul>")
    parts.append("</body></html>")
    (out / "validation.html").write_text("\n".join(parts))
    return [
        out / n
        for n in (
            "validation.json",
            "validation.html",
            "roc.png",
            "reliability.png",
            "confusion_matrix.png",
        )
    ]
