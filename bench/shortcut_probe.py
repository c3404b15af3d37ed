"""Does a model read the hospital (or the age) instead of the lungs? (An analysis, not a test.)

    .venv/bin/python -m bench.shortcut_probe --model models/default \\
        --data ../shared/data/cxr3 ../shared/data/cxr_sites
    .venv/bin/python -m bench.shortcut_probe --by age_group ...

On the model's own held-out test split (``split.csv``), among **normal** radiographs only, it
asks how well the flag score tells one group from the rest: for ``--by site`` (the default),
P(COVID-19) and 1 - P(normal) for "this healthy film is from site S", each site against the
others (AUROC, and max(AUROC, 1 - AUROC): a site read either way is a shortcut); for
``--by age_group``, each output for "this is a child". 0.5 means the score carries nothing of
the group among healthy patients. Images go through the serving path: image check, lung crop,
classifier. ``crossval --by site`` reports the same probe for sites the model never saw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument(
        "--data", type=Path, nargs="+", default=[SHARED / "cxr3", SHARED / "cxr_sites"]
    )
    parser.add_argument("--by", choices=("site", "age_group"), default="site")
    parser.add_argument(
        "--split",
        type=Path,
        help="split.csv whose test normals to use (default: the model's own; give another "
        "model's to compare two models on the same images)",
    )
    args = parser.parse_args()

    import numpy as np

    from models.data import list_datasets, read_split
    from models.imaging import load_image
    from models.labels import canonical
    from models.loader import load_model
    from models.metrics import softmax
    from models.site_eval import site_probe
    from models.sites import SITE_COLUMN
    from models.transfer_training import shortcut_probe

    model = load_model(args.model)
    samples = list_datasets(args.data, tuple(canonical(x) for x in model.labels))
    split = args.split or args.model / "split.csv"
    test = [s for s in read_split(split, samples)["test"] if s.label == "normal"]
    refusals, logits = [], []
    for i in range(0, len(test), 64):
        reasons, chunk, _ = model.checked_logits([load_image(s.path) for s in test[i : i + 64]])
        refusals += reasons
        logits.append(chunk)
    kept = [test[i] for i, reason in enumerate(refusals) if reason is None]
    probs = softmax(np.concatenate(logits), model.card.temperature)
    print(f"normal test images: {len(kept)} of {len(test)} passed the image check")
    if args.by == "site":
        sites = [s.columns.get(SITE_COLUMN, "") for s in kept]
        y = np.zeros(len(kept), int)
        worst = 0.0
        for site in sorted(set(sites)):
            p = site_probe(probs, y, sites, site)
            worst = max(worst, p["p_covid_either_way"] or 0.0)
            print(
                f"site {site:<14} n={p['n_site']:<4} vs {p['n_other']:<4} AUROC from "
                f"P(COVID-19) {p['p_covid']:.3f} (either way {p['p_covid_either_way']:.3f}), "
                f"from 1 - P(normal) {p['flag_score']:.3f}"
            )
        print(f"worst site, P(COVID-19) either way: {worst:.3f}")
        return 0
    probe = shortcut_probe(probs, kept)
    print(f"{probe['n_children']} pediatric, {probe['n_adults']} adult")
    for label in model.labels:
        lab = canonical(label)
        print(
            f"P({lab}) separates children from adults among normals: AUROC "
            f"{probe[f'auroc_child_from_p_{lab}']:.3f}; mean "
            f"{probe[f'mean_p_{lab}_children']:.3f} (children) vs "
            f"{probe[f'mean_p_{lab}_adults']:.3f} (adults)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
