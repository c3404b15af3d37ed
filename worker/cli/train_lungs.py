"""``cxr-triage train-lungs``: train the lung segmentation model (crop and image check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-lungs",
        help="train the lung segmentation U-Net on images with lung masks",
        description=(
            "Train the small U-Net that crops the classifier's input to the lungs and refuses "
            "images without a plausible pair of lungs, on DIR/manifest.csv rows "
            "image,mask,label,split (split train or val). Reports Dice on val at the masks' "
            "resolution and how many val images the image check refuses."
        ),
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--base-filters", type=int, default=12)
    p.add_argument("--limit", type=int, help="use at most N training images (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.lungs import LungTrainConfig, train_lungs

    try:
        card = train_lungs(
            LungTrainConfig(
                data=args.data,
                out=args.out,
                size=args.size,
                base_filters=args.base_filters,
                epochs=args.epochs,
                seed=args.seed,
                limit=args.limit,
                progress=not args.quiet,
            )
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"cxr-triage train-lungs: {exc}", file=sys.stderr)
        return 2
    m = card.metrics
    print(
        f"wrote {args.out}: Dice {m['dice_mean']:.4f} on {m['n']} val images; image check "
        f"refused {m['check_refused']} ({m['check_refused_rate']:.2%})"
    )
    return 0
