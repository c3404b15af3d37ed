"""``cxr-triage evaluate``: honest evaluation of a model folder on a labelled dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on a labelled dataset, overall and per group",
        description=(
            "Accuracy; per-class sensitivity, specificity, PPV, NPV, F1; one-vs-rest and macro "
            "AUROC with bootstrap 95%% CIs; confusion matrix; expected calibration error; and "
            "the same for every manifest column (source, age group ...). DIR holds "
            "<label>/<image> (PNG, JPEG or DICOM), optionally with manifest.csv."
        ),
    )
    p.add_argument("--model", type=Path, help="model folder (default: the shipped model)")
    p.add_argument("--data", type=Path, required=True, nargs="+", metavar="DIR")
    p.add_argument(
        "--split",
        type=Path,
        metavar="FILE",
        help="a model folder's split.csv: evaluate on its test images only (compare two models "
        "on the same held-out images)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full report as JSON")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write PNG plots here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fmt(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:.3f}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.card import ModelCardError
    from models.data import DatasetError
    from models.evaluation import evaluate_folder, write_report
    from models.imaging import UnreadableImageError
    from models.loader import load_model
    from worker.decision import operating_point_for
    from worker.site_calibration import SiteCalibrationError

    try:
        model = load_model(args.model)
        # The operating point in force, a site calibration's temperature included.
        point = operating_point_for(settings, model.card)
        point.apply(model)
        report, y, probs = evaluate_folder(
            model,
            args.data,
            split=args.split,
            progress=not args.quiet,
            thresholds=point.thresholds,
        )
    except (
        ModelCardError,
        DatasetError,
        UnreadableImageError,
        SiteCalibrationError,
        ValueError,
    ) as exc:
        print(f"cxr-triage evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plots:
        write_report(report, y, probs, model.labels, args.plots)
    ci = report["macro_auroc_ci95"]
    data = ", ".join(str(d) for d in args.data)
    print(f"{model.card.name} {model.card.version} on {data}: n={report['n']}")
    refused = report.get("refused_by_image_check", {})
    if refused.get("n"):
        print(
            f"not scored: {refused['n']} images refused by the image check "
            f"({', '.join(f'{k} {v}' for k, v in sorted(refused['by_label'].items()))})"
        )
    print(
        f"accuracy {_fmt(report['accuracy'])}  macro AUROC {_fmt(report['macro_auroc'])}"
        + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        + f"  ECE {report['ece']:.3f}"
    )
    print(
        f"{'class':18} {'n':>5} {'sens':>6} {'spec':>6} {'PPV':>6} {'NPV':>6} "
        f"{'F1':>6} {'AUROC':>6}"
    )
    for label, m in report["per_class"].items():
        print(
            f"{label:18} {m['n']:>5} {_fmt(m['sensitivity']):>6} {_fmt(m['specificity']):>6} "
            f"{_fmt(m['ppv']):>6} {_fmt(m['npv']):>6} {_fmt(m['f1']):>6} {_fmt(m['auroc']):>6}"
        )
    for column, groups in report["by_column"].items():
        print(f"by {column}:")
        for group, m in groups.items():
            sens = " ".join(
                f"{k}={_fmt(v['sensitivity']).strip()}" for k, v in m["per_class"].items() if v["n"]
            )
            print(f"  {group:16} n={m['n']:<5} accuracy {_fmt(m['accuracy'])}  sensitivity {sens}")
    sites = report.get("by_site_at_operating_point") or {}
    if sites:
        print(f"by site at the operating point ({point.describe()}):")
        for site, f in sites.items():
            pc = f["per_class"]
            print(
                f"  {site:16} n={f['n']:<5} macro AUROC {_fmt(f['macro_auroc'])}  "
                f"specificity {_pct(pc.get('normal', {}).get('specificity'))}  "
                f"false COVID {_pct(f['false_covid_rate'])}  "
                f"COVID sens {_pct(pc.get('covid', {}).get('sensitivity'))}  "
                f"pneumonia sens {_pct(pc.get('pneumonia', {}).get('sensitivity'))}"
            )
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
