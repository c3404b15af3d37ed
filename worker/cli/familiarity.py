"""``cxr-triage familiarity``: fit a model folder's index of what its training data looks like."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "familiarity",
        help="fit the index that calls images unlike the training data low confidence",
        description=(
            "Measure the model's pooled features of its own training split (up to --per-site "
            "films a site), set the limit at --quantile of its validation split's distances, and "
            "write familiarity.npz into the model folder with its entry in the card. Reports, on "
            "the test split, the share of each training site's films called low confidence, and "
            "with each site left out of the index in turn, the share of that unseen site's. "
            "Needs the model folder's split.csv and the data it was trained on."
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="model folder (written to)")
    p.add_argument("--data", type=Path, required=True, nargs="+", metavar="DIR")
    p.add_argument("--per-site", type=int, default=500, metavar="N")
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--dims", type=int, default=64)
    p.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}%"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from models.card import ModelCardError
    from models.data import DatasetError, list_datasets, read_split
    from models.familiarity import FAMILIARITY_FILE, FamiliarityError
    from models.familiarity_fit import card_entry, fit_for_model
    from models.imaging import UnreadableImageError
    from models.labels import canonical
    from models.loader import load_model

    split = args.model / "split.csv"
    try:
        if not split.is_file():
            raise DatasetError(f"{args.model} has no split.csv: the index needs the model's split")
        model = load_model(args.model)
        samples = list_datasets(args.data, tuple(canonical(x) for x in model.labels))
        parts = read_split(split, samples)
        index, report = fit_for_model(
            model,
            parts,
            per_site=args.per_site,
            quantile=args.quantile,
            dims=args.dims,
            progress=not args.quiet,
        )
    except (ModelCardError, DatasetError, UnreadableImageError, FamiliarityError) as exc:
        print(f"cxr-triage familiarity: {exc}", file=sys.stderr)
        return 2
    digest = index.save(args.model / FAMILIARITY_FILE)
    card = replace(
        model.card,
        familiarity=card_entry(model, digest, report, [str(d) for d in args.data]),
    )
    card.save(args.model)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{card.name} {card.version}: familiarity index of {report['n_fit']} training films, "
        f"{report['dims']} directions, limit {report['limit']:.3f} "
        f"({100 * report['quantile']:g}th percentile of {report['n_limit']} validation films)"
    )
    print("test split, low confidence by site (trained on):")
    for site, r in report["test_by_site"].items():
        print(f"  {site:14s} n={r['n']:5d} {_pct(r['low_confidence'])}")
    print("each site left out of the index (unseen) vs the others (seen):")
    for site, r in report["site_left_out"].items():
        print(
            f"  {site:14s} n={r['n']:5d} unseen {_pct(r['low_confidence'])}"
            f"  seen {_pct(r['seen_sites_low_confidence'])}"
        )
    return 0
