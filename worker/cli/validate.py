"""``cxr-triage validate``: how the model does on this hospital's own labelled studies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.settings import Settings

if TYPE_CHECKING:  # models pulls in TensorFlow on use
    from models.data import Sample
    from models.evaluation import Scored
    from worker.decision import OperatingPoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check the model on your own labelled studies (HTML + JSON report)",
        description=(
            "Run the model, at the operating point in force (the card's, CXR_SITE_CALIBRATION "
            "or CXR_THRESHOLD_*), over a hospital's labelled files: DATA is a folder with "
            "<label>/<file> (normal, covid, pneumonia) or a manifest.csv, or a CSV manifest "
            "(file,label,...; paths relative to it). Writes validation.html and "
            "validation.json to --out: sensitivity and specificity with 95%% CIs at the "
            "thresholds, ROC, calibration, the confusion matrix at the triage decision, "
            "refusals, and the same per view, modality and manufacturer. Nothing is written "
            "if a file cannot be read or the set lacks normal or abnormal films. "
            "Not for diagnostic use."
        ),
    )
    add_data_options(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder")
    p.set_defaults(func=run)


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, metavar="PATH", help="folder or CSV")
    p.add_argument("--model", type=Path, help="model folder (default: CXR_MODEL_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def scored_data(
    args: argparse.Namespace, settings: Settings, command: str
) -> tuple[Any, OperatingPoint, list[Sample], Scored] | str:
    """(model, operating point, samples, scored) or a one-line error (exit 2) as a string.

    The labels and classes are checked before the model loads; every file is read before
    anything is written.
    """
    from models.card import ModelCardError
    from models.compiled import CompiledModelError
    from models.data import DatasetError, list_dataset
    from models.evaluation import score
    from models.imaging import UnreadableImageError
    from models.labels import LABELS
    from models.local_validation import check_classes
    from worker.decision import operating_point_for
    from worker.site_calibration import SiteCalibrationError

    try:
        samples = list_dataset(args.data, LABELS)
        check_classes(samples)
        from models.loader import load_serving

        # What a worker serves (LiteRT or TensorFlow, CXR_MODEL_RUNTIME) is what is validated.
        model = load_serving(
            args.model or settings.model.model_dir,
            runtime=settings.model.model_runtime,
            cache=settings.model.model_cache,
        )
        point = operating_point_for(settings, model.card)
        point.apply(model)
        scored = score(model, samples, progress=not args.quiet, desc="validating")
    except (
        DatasetError,
        ModelCardError,
        CompiledModelError,
        SiteCalibrationError,
        UnreadableImageError,
    ) as exc:
        return f"cxr-triage {command}: {exc}"
    if not len(scored.y):
        return f"cxr-triage {command}: the image check refused all {len(samples)} files"
    return model, point, samples, scored


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.local_validation import validation_report, write_validation

    got = scored_data(args, settings, "validate")
    if isinstance(got, str):
        print(got, file=sys.stderr)
        return 2
    model, point, _, scored = got
    report = validation_report(
        scored, point.thresholds, model.card.temperature, novelty=scored.novelty(model)
    )
    report["model"] = {
        "name": model.card.name,
        "version": model.card.version,
        "weights_sha256": model.card.weights_sha256,
    }
    report["operating_point"] = point.source
    report["data"] = str(args.data)
    write_validation(
        report,
        scored,
        args.out,
        title=f"Local validation of {model.card.name} {model.card.version}",
    )
    at = report["at_thresholds"]

    def pct(p: dict[str, Any]) -> str:
        if p.get("value") is None:
            return "-"
        lo, hi = p["ci95"]
        return f"{100 * p['value']:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}%, n={p['n']})"

    print(
        f"{model.card.name} {model.card.version} on {args.data}: {report['n_classified']} "
        f"classified, {report['refused']['n']} refused; operating point {point.describe()}"
    )
    print(f"  specificity (no flag on a normal film): {pct(at['specificity'])}")
    for key, value in at.items():
        if key.startswith("sensitivity_"):
            print(f"  {key.replace('_', ' ')}: {pct(value)}")
    if (low := report["low_confidence"]) is not None:
        print(f"  low confidence (unlike the model's training data): {low['n']} films")
    print(f"wrote {args.out / 'validation.html'} and validation.json")
    return 0
