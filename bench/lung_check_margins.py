"""How far real chests sit from the image check's limits. (An analysis, not a test.)

    .venv/bin/python -m bench.lung_check_margins --cxr3-sample 1200

Runs the shipped lung model over lungseg's val split and a seeded sample of cxr3, and prints the
distribution (percentiles) of every quantity the image check's rules read, next to the rule's
limit, then the same quantities for the real DICOM files in ../shared/data/dicom (the dog among
them). The limits in ``models/lungs.py`` (``PlausibilityRules``) were set from this output.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data"

# measure -> (rule field, "max" or "min")
LIMITS = {
    "components": ("max_components", "max"),
    "stray_fraction": ("max_stray_fraction", "max"),
    "total_area": ("max_total_area", "max"),
    "lung_area_2": ("min_lung_area", "min"),
    "separation": ("min_separation", "min"),
    "vertical_offset": ("max_vertical_offset", "max"),
    "confidence": ("min_confidence", "min"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cxr3-sample", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    from models.imaging import letterbox, load_image
    from models.lungs import PlausibilityRules, assess, load_lung_model, read_lungseg

    lungs = load_lung_model()
    rules = lungs.rules
    # Measure every quantity: with no limits, assess() reaches all of them.
    loose = PlausibilityRules(
        min_lung_area=0, min_total_area=0, max_total_area=1, min_separation=0,
        max_vertical_offset=1, max_area_ratio=1e9, min_confidence=0, max_components=10**6,
        max_stray_fraction=1,
    )  # fmt: skip
    paths = [row[0] for row in read_lungseg(DATA / "lungseg")["val"]]
    with open(DATA / "cxr3" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(rows), min(args.cxr3_sample, len(rows)), replace=False)
    paths += [DATA / "cxr3" / rows[i]["file"] for i in sorted(pick)]

    def measure(images: list[np.ndarray]) -> list[dict[str, float]]:
        squares = [letterbox(img, lungs.card.input_size) for img in images]
        probs = lungs.probabilities(np.stack([sq for sq, _ in squares])[..., None])
        return [
            assess(p, box, rules=loose).measures for p, (_, box) in zip(probs, squares, strict=True)
        ]

    measures: list[dict[str, float]] = []
    for i in range(0, len(paths), 64):
        measures += measure([load_image(p) for p in paths[i : i + 64]])
    findings = [(p, lungs.find([load_image(p)])[0]) for p in paths]
    refused = [(p, f) for p, f in findings if not f.ok]
    print(f"real chests: {len(paths)} (lungseg val + {len(pick)} cxr3); refused: {len(refused)}")
    for p, f in refused:
        print(f"  {p.parent.name}/{p.name}: {f.reason}")
    print(f"{'measure':16} {'limit':>12} {'min':>7} {'0.5%':>7} {'50%':>7} {'99.5%':>7} {'max':>7}")
    for key, (field, side) in LIMITS.items():
        values = np.array([m[key] for m in measures if key in m])
        q = np.percentile(values, [0, 0.5, 50, 99.5, 100])
        limit = f"{side} {getattr(rules, field):g}"
        print(f"{key:16} {limit:>12} " + " ".join(f"{v:7.3f}" for v in q))
    print("real DICOM files:")
    for path in sorted((DATA / "dicom").glob("*.dcm")):
        (m,) = measure([load_image(path)])
        (finding,) = lungs.find([load_image(path)])
        shown = ", ".join(f"{k} {m[k]:.3f}" for k in LIMITS if k in m)
        print(f"  {path.name}: {'passes' if finding.ok else finding.reason}; {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
