"""``cxr-triage train``: train a model folder on labelled radiographs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    from models.architectures import ARCHITECTURES, MODES

    p = sub.add_parser(
        "train",
        help="train a classifier on a folder-per-label dataset",
        description=(
            "Train one of the thesis's models on DIR/<label>/<image> (optional DIR/manifest.csv "
            "with file,label,... columns), with a seeded saved split (default 80%% train / 20%% "
            "test, 10%% of train for validation), augmentation, class weights, early stopping, "
            "temperature calibration and an evaluation on the held-out split. Writes the model "
            "folder: model.keras, card.json, MODEL_CARD.md, split.csv, history.csv, "
            "training_curves.png and evaluation/."
        ),
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        nargs="+",
        metavar="DIR",
        help="one or more data folders, read together (split grouped by a manifest's group)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model folder to write")
    p.add_argument("--arch", choices=ARCHITECTURES, default="residual_dense")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="scratch",
        help="ec: frozen ImageNet base + dense head; ft: fine-tune; scratch: random init",
    )
    p.add_argument(
        "--imagenet-weights",
        type=Path,
        metavar="PATH",
        help="local no-top ImageNet weights for ec/ft (nothing is downloaded)",
    )
    p.add_argument(
        "--size", type=int, help="input side (default: 128 for residual_dense, else the base's)"
    )
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience, epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument(
        "--limit-per-label", type=int, help="use at most N images per label (quick runs)"
    )
    p.add_argument("--name", default="cxr-triage-cnn")
    p.add_argument("--version", dest="model_version", default="1.0.0")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    add_transfer_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_transfer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--intensity",
        choices=("none", "equalised"),
        default="none",
        help="equalised: equalise the lung crop's histogram before the model, in training and "
        "serving alike (recorded in the card)",
    )
    p.add_argument(
        "--balance",
        type=float,
        default=0.5,
        help="Xception ec/ft: site balance within a class, 0 (class weights only) to 1 (every "
        "site the same); default 0.5",
    )
    p.add_argument(
        "--max-false-flag",
        type=float,
        default=0.05,
        metavar="RATE",
        help="operating point: flag thresholds at which at most RATE of the validation split's "
        "normal films are flagged, averaged over sites (default 0.05)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "cxr-triage" / "features",
        metavar="DIR",
        help="Xception ec/ft: where lung-cropped features are cached (computed once, resumable)",
    )
    p.add_argument(
        "--lung-model", type=Path, metavar="DIR", help="lung model folder (default: shipped)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.architectures import MissingWeightsError
    from models.card import ModelCardError
    from models.data import DatasetError
    from models.imaging import UnreadableImageError
    from models.training import TrainConfig, train

    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        arch=args.arch,
        mode=args.mode,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        seed=args.seed,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        imagenet_weights=args.imagenet_weights,
        name=args.name,
        version=args.model_version,
        limit_per_label=args.limit_per_label,
        resume=args.resume,
        progress=not args.quiet,
        cache=args.cache,
        lung_model=args.lung_model,
        balance=args.balance,
        max_false_flag=args.max_false_flag,
        intensity=args.intensity,
    )
    try:
        card = train(cfg)
    except (
        MissingWeightsError,
        ModelCardError,
        DatasetError,
        UnreadableImageError,
        ValueError,
    ) as exc:
        print(f"cxr-triage train: {exc}", file=sys.stderr)
        return 2
    m = card.metrics
    print(
        f"wrote {args.out}: {card.name} {card.version}, internal test n={m['n']}, "
        f"accuracy {m['accuracy']:.4f}, macro AUROC {m['macro_auroc']:.4f}"
    )
    if card.operating_point:
        op = ", ".join(f"{k} >= {v:.3f}" for k, v in card.operating_point["thresholds"].items())
        print(f"  operating point: {op}")
    for column, groups in m.get("by_column", {}).items():
        parts = ", ".join(f"{g} {r['accuracy']:.3f} (n={r['n']})" for g, r in groups.items())
        print(f"  by {column}: {parts}")
    return 0
