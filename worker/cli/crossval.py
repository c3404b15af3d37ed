"""``cxr-triage crossval``: leave one source (or age group) out, the default model's criterion."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from worker.cli.train import add_transfer_options
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "crossval",
        help="train without each site (or source, age group) and test on it",
        description=(
            "--by site (the default): for every site with normal and abnormal films, train "
            "Xception (--mode ec or ft, from the lung-cropped feature cache, site-balanced) on "
            "the other sites, calibrate and pick the operating thresholds on their validation "
            "split, and report the held-out site's macro AUROC, sensitivity and specificity at "
            "those thresholds, false-COVID rate among its normals, ECE and the site probe; the "
            "worst site is the selection figure. --by source / age_group: per class held out, "
            "the AUROC of its images against every test image of another class. "
            "Not for diagnostic use."
        ),
    )
    p.add_argument("--data", type=Path, required=True, nargs="+", metavar="DIR")
    p.add_argument(
        "--by", default="site", help="manifest column to leave out: site (default), source, ..."
    )
    p.add_argument(
        "--sites", nargs="+", metavar="SITE", help="with --by site: hold out only these sites"
    )
    p.add_argument("--mode", choices=("ec", "ft"), default="ft")
    p.add_argument("--imagenet-weights", type=Path, required=True, metavar="PATH")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full result as JSON")
    p.add_argument(
        "--split-dir",
        type=Path,
        default=Path.home() / ".cache" / "cxr-triage" / "crossval",
        metavar="DIR",
        help="where the seeded split is kept (the same seed gives the same split as train)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_transfer_options(p)
    p.set_defaults(func=run)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.architectures import MissingWeightsError, check_request
    from models.card import ModelCardError
    from models.data import DatasetError
    from models.training import TrainConfig
    from models.transfer_training import crossval, write_json

    cfg = TrainConfig(
        data=args.data,
        out=args.split_dir,
        arch="xception",
        mode=args.mode,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=3,
        seed=args.seed,
        imagenet_weights=args.imagenet_weights,
        progress=not args.quiet,
        cache=args.cache,
        lung_model=args.lung_model,
        balance=args.balance,
        max_false_flag=args.max_false_flag,
        intensity=args.intensity,
    )
    try:
        check_request("xception", args.mode, args.imagenet_weights)
        result = crossval(cfg, args.by, args.sites)
    except (MissingWeightsError, ModelCardError, DatasetError, ValueError) as exc:
        print(f"cxr-triage crossval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_json(result, args.json)
    if args.by == "site":
        print_sites(result)
        return 0
    print(f"leave one {args.by} out, Xception {args.mode}:")
    print(f"{'held out':<12} {'class':<10} {'n':>5} {'AUROC (95% CI)':>22} {'sensitivity':>11}")
    for group, fold in result["folds"].items():
        if not fold["estimable"]:
            print(f"{group:<12} not estimable: {fold['reason']}")
            continue
        for label, c in fold["held_out"].items():
            ci = c["auroc_ci95"]
            ci_text = f"{_fmt(c['auroc'])} ({_fmt(ci[0])}-{_fmt(ci[1])})" if ci else _fmt(None)
            print(
                f"{group:<12} {label:<10} {c['n_held_out']:>5} {ci_text:>22} "
                f"{c['sensitivity']:>11.3f}"
            )
    print(f"mean held-out AUROC: {_fmt(result['mean_held_out_auroc'])}")
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def print_sites(result: dict[str, Any]) -> None:
    """One row per held-out site at its fold's operating thresholds, then the worst of each."""
    print(
        f"leave one site out, Xception {result['mode']}, site balance {result['balance']}, "
        f"thresholds at {result['max_false_flag']:.0%} false flags on validation:"
    )
    print(
        f"{'held out':<13} {'n':>5} {'macro AUROC':>11} {'spec':>6} {'false COVID':>11} "
        f"{'COVID sens':>10} {'pneu sens':>9} {'ECE':>6} {'probe':>6}  thresholds"
    )
    for site, fold in result["folds"].items():
        if not fold["estimable"]:
            print(f"{site:<13} not estimable: {fold['reason']}")
            continue
        h = fold["held_out"]
        pc = h["per_class"]
        th = ", ".join(f"{k} {v:.3f}" for k, v in h["thresholds"].items())
        print(
            f"{site:<13} {h['n']:>5} {_fmt(h['macro_auroc']):>11} "
            f"{_pct(pc.get('normal', {}).get('specificity')):>6} "
            f"{_pct(h['false_covid_rate']):>11} "
            f"{_pct(pc.get('covid', {}).get('sensitivity')):>10} "
            f"{_pct(pc.get('pneumonia', {}).get('sensitivity')):>9} {_fmt(h['ece']):>6} "
            f"{_fmt(fold['probe']['p_covid_either_way']):>6}  {th}"
        )
    print("worst held-out site:")
    for name, w in result["worst"].items():
        value = w["value"]
        text = _fmt(value) if name in ("macro_auroc", "ece", "probe_p_covid") else _pct(value)
        print(f"  {name:<22} {text:>7}  ({w['site']})")
