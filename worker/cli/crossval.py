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
        help="train without each source (or age group) and test on it",
        description=(
            "For every value of a manifest column (--by source, --by age_group), train Xception "
            "(--mode ec or ft, from the lung-cropped feature cache) on the other values' train "
            "split and test on the held-out value plus the others' test split. Prints, per "
            "fold and class held out, the AUROC of the held-out images against every test image "
            "of another class (95%% bootstrap CI) and the share classified right; a fold whose "
            "training would lack a class is reported as not estimable. Not for diagnostic use."
        ),
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR")
    p.add_argument("--by", default="source", help="manifest column to leave out (default source)")
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
    )
    try:
        check_request("xception", args.mode, args.imagenet_weights)
        result = crossval(cfg, args.by)
    except (MissingWeightsError, ModelCardError, DatasetError, ValueError) as exc:
        print(f"cxr-triage crossval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_json(result, args.json)
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
