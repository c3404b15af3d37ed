"""``cxr-triage calibrate``: this hospital's thresholds, from its own labelled studies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.cli.validate import add_data_options, scored_data
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="set this site's thresholds for a target sensitivity or specificity",
        description=(
            "Fit the temperature and pick each flagged class's threshold on a hospital's "
            "labelled files (as for validate) for a target sensitivity (the highest threshold "
            "that finds at least that share of the class) or specificity (the lowest at which "
            "at most 1 - target of normal films are flagged). Writes a site file with the "
            "thresholds, the temperature, what they were fitted on (digest, n, date) and the "
            "figures they give there; point the worker at it with CXR_SITE_CALIBRATION=FILE. "
            "Check with validate on other studies than those calibrated on. "
            "Not for diagnostic use."
        ),
    )
    add_data_options(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-sensitivity", type=float, metavar="S")
    target.add_argument("--target-specificity", type=float, metavar="S")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="site file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.local_validation import (
        data_digest,
        operating_figures,
        refit_temperature,
        site_thresholds,
    )
    from worker.site_calibration import CalibratedModel, SiteCalibration

    for name in ("target_sensitivity", "target_specificity"):
        value = getattr(args, name)
        if value is not None and not 0 < value < 1:
            print(
                f"cxr-triage calibrate: --{name.replace('_', '-')} must be between 0 and 1",
                file=sys.stderr,
            )
            return 2
    got = scored_data(args, settings, "calibrate")
    if isinstance(got, str):
        print(got, file=sys.stderr)
        return 2
    model, point, samples, scored = got
    temperature = refit_temperature(scored)
    probs = scored.probs(temperature)
    thresholds = site_thresholds(
        scored.y,
        probs,
        target_sensitivity=args.target_sensitivity,
        target_specificity=args.target_specificity,
        current=point.thresholds,
    )
    target = (
        f"sensitivity {args.target_sensitivity:.2f}"
        if args.target_sensitivity is not None
        else f"specificity {args.target_specificity:.2f}"
    )
    site = SiteCalibration(
        model=CalibratedModel(
            name=model.card.name,
            version=model.card.version,
            weights_sha256=model.card.weights_sha256,
        ),
        thresholds=thresholds,
        temperature=temperature,
        target=target,
        data={
            "path": str(args.data),
            "sha256": data_digest(samples),
            "n": len(scored.y),
            "refused": len(scored.refused),
            "by_label": {label: int((scored.y == k).sum()) for k, label in enumerate(model.labels)},
        },
        figures=operating_figures(scored.y, probs, thresholds),
    )
    site.save(args.out)
    shown = ", ".join(f"{k} >= {v:.3f}" for k, v in thresholds.items())
    spec = site.figures["specificity"]["value"]
    print(
        f"wrote {args.out}: {target} on {len(scored.y)} films; thresholds {shown}; temperature "
        f"{temperature:.3f}; specificity there {100 * spec:.1f}%"
    )
    print(f"use it: CXR_SITE_CALIBRATION={args.out.resolve()}")
    return 0
