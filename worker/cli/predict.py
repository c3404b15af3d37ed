"""``cxr-triage predict``: classify images and optionally write Grad-CAM overlays."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify DICOM, PNG or JPEG files",
        description=(
            "Print the triage result at the operating point in force (the card's, "
            "CXR_SITE_CALIBRATION or CXR_THRESHOLD_*: the same decision the worker sends to the "
            "PACS), the calibrated probabilities and the model's name and version for each "
            "file. Images that fail the image check (colour pictures, no plausible pair of "
            "lungs) are not classified: the reason is printed instead and the exit status is 1. "
            "--heatmap DIR writes per file the picture the PACS gets as the SC: the Grad-CAM "
            "overlay "
            "(for a flagged or indeterminate result) above the strip that says the result. "
            "Inputs are checked before the model loads. Not for diagnostic use."
        ),
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files or folders")
    p.add_argument("--model", type=Path, help="model folder (default: CXR_MODEL_DIR)")
    p.add_argument("--heatmap", type=Path, metavar="DIR", help="write Grad-CAM overlays here")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def inputs(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The image files named (folders searched recursively), and one line per path that is
    not one: checked from the files' first bytes, before the model loads."""
    from models.imaging import image_kind

    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        if path.is_dir():
            found = [f for f in sorted(path.rglob("*")) if f.is_file() and image_kind(f)]
            if not found:
                problems.append(f"{path}: no DICOM, PNG or JPEG files in this folder")
            files.extend(found)
        elif not path.exists():
            problems.append(f"{path}: no such file")
        elif image_kind(path) is None:
            problems.append(f"{path}: not a DICOM, PNG or JPEG image")
        else:
            files.append(path)
    return files, problems


def run(args: argparse.Namespace, settings: Settings) -> int:
    files, problems = inputs(args.files)
    for line in problems:
        print(f"cxr-triage predict: {line}", file=sys.stderr)
    if not files:
        print("cxr-triage predict: nothing to classify", file=sys.stderr)
        return 2

    from PIL import Image

    from dicom_node.results import wording
    from dicom_node.results.algorithm import Algorithm
    from dicom_node.results.sc import labelled_picture
    from dicom_node.results.triage import NOT_FLAGGED
    from models.card import ModelCardError
    from models.compiled import CompiledModelError
    from models.gradcam import colour_ramp, overlay
    from models.imaging import UnreadableImageError, is_colour, load_image
    from models.loader import load_serving
    from worker.decision import operating_point_for
    from worker.site_calibration import SiteCalibrationError

    try:
        # As a worker serves it (CXR_MODEL_RUNTIME), so the result is the one the PACS gets.
        model = load_serving(
            args.model or settings.model.model_dir,
            runtime=settings.model.model_runtime,
            cache=settings.model.model_cache,
        )
        point = operating_point_for(settings, model.card)
    except (ModelCardError, CompiledModelError, SiteCalibrationError) as exc:
        print(f"cxr-triage predict: {exc}", file=sys.stderr)
        return 2
    point.apply(model)
    algorithm = Algorithm(model.card.name, model.card.version, model.card.weights_sha256)
    if args.heatmap:
        args.heatmap.mkdir(parents=True, exist_ok=True)
    failed, refused = len(problems), 0
    for path in files:
        try:
            image = load_image(path)
        except (UnreadableImageError, OSError) as exc:
            print(f"cxr-triage predict: {exc}", file=sys.stderr)
            if args.verbose and exc.__cause__ is not None:
                print(f"  ({exc.__cause__})", file=sys.stderr)
            failed += 1
            continue
        (pred,) = model.predict([image], heatmaps=bool(args.heatmap), colour=[is_colour(path)])
        if pred.refused:
            # Not an answer: the image is not something the model may classify.
            refusal = {"file": str(path), "refused": pred.refused, "model": model.card.name}
            print(json.dumps(refusal) if args.json else f"{path}: not classified: {pred.refused}")
            refused += 1
            continue
        decision = point.image(pred.probabilities, pred.novelty)
        record = {
            "file": str(path),
            "label": decision.label,  # the triage result, as the SR and SC say it
            "band": decision.band,
            "priority": decision.priority,
            "low_confidence": decision.low_confidence,
            "novelty": pred.novelty,
            "result": wording.headline(decision),
            "top_class": pred.label,
            "operating_point": point.describe(),
            "probabilities": pred.probabilities,
            "model": model.card.name,
            "version": model.card.version,
        }
        if args.heatmap:
            # The SC's picture: colours only where the SC has them, and the same strip.
            heat = None if decision.band == NOT_FLAGGED else pred.heatmap
            picture = labelled_picture(
                overlay(image, heat),
                decision,
                pred.heatmap_label if heat is not None else None,
                algorithm,
                colour_ramp(),
            )
            out = args.heatmap / f"{path.stem}_gradcam.png"
            Image.fromarray(picture).save(out)
            record["heatmap"] = str(out)
        if args.json:
            print(json.dumps(record))
        else:
            print(
                f"{path}: {wording.headline(decision)}  ({wording.ranked(pred.probabilities)})  "
                f"[{model.card.name} {model.card.version}; {point.describe()}]"
            )
    total = len(files) + len(problems)
    if refused:
        print(f"{refused} of {total} images refused by the image check", file=sys.stderr)
    return 1 if failed or refused else 0
