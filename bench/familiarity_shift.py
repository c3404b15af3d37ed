"""What does "low confidence" catch? The shipped model's test films, changed as a new scanner or a
broken processing chain would change them. (An analysis, not a test.)

    .venv/bin/python -m bench.familiarity_shift --per-site 60

For each change (none, inverted grey scale, noise, blur, over-brightening gamma, JPEG at
quality 5, 64-pixel resolution) it reports, over the model's own test split (``split.csv``,
up to ``--per-site`` films a site, all labels), the share refused by the image check, the share
called low confidence by the model's familiarity index, and how often the triage band at the
card's operating point differs from the unchanged film's: a change that moves the answer
without being called low confidence is a silent failure.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))


def _back(img: Image.Image) -> np.ndarray:
    return np.asarray(img, np.float32) / 255.0


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    _pil(img).save(buf, "JPEG", quality=quality)
    return _back(Image.open(io.BytesIO(buf.getvalue())))


def _resample(img: np.ndarray, size: int) -> np.ndarray:
    small = _pil(img).resize((size, size), Image.Resampling.BILINEAR)
    return _back(small.resize(img.shape[::-1], Image.Resampling.BILINEAR))


CHANGES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "none": lambda x, rng: x,
    "inverted": lambda x, rng: 1.0 - x,
    "noise 0.1": lambda x, rng: np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1),
    "blur": lambda x, rng: _back(_pil(x).filter(ImageFilter.GaussianBlur(x.shape[0] / 80))),
    "gamma 0.4": lambda x, rng: x**0.4,
    "jpeg q5": lambda x, rng: _jpeg(x, 5),
    "64 px": lambda x, rng: _resample(x, 64),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument(
        "--data", type=Path, nargs="+", default=[SHARED / "cxr3", SHARED / "cxr_sites"]
    )
    parser.add_argument("--per-site", type=int, default=60)
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args()

    from models.data import list_datasets, read_split
    from models.familiarity_fit import subsample
    from models.imaging import load_image
    from models.labels import canonical
    from models.loader import load_model
    from worker.decision import operating_point

    model = load_model(args.model)
    if model.familiarity is None:
        raise SystemExit(f"{args.model}: the card names no familiarity index")
    point = operating_point(model.card.operating_point, None, None)
    samples = list_datasets(args.data, tuple(canonical(x) for x in model.labels))
    test = subsample(read_split(args.model / "split.csv", samples)["test"], args.per_site)
    originals = [load_image(s.path) for s in test]
    rng = np.random.default_rng(0)
    base: list[str | None] = []
    figures: dict[str, dict[str, float | int]] = {}
    print(f"{len(test)} test films; change: refused, low confidence, band changed (silently)")
    for name, change in CHANGES.items():
        preds = []
        for i in range(0, len(originals), 32):
            chunk = [change(x, rng).astype(np.float32) for x in originals[i : i + 32]]
            preds += model.predict(chunk)
        bands = [None if p.refused else point.image(p.probabilities).band for p in preds]
        if name == "none":
            base = bands
        classified = [i for i, p in enumerate(preds) if not p.refused]
        low = [i for i in classified if (preds[i].novelty or 0.0) > 1.0]
        moved = [i for i in classified if base[i] is not None and bands[i] != base[i]]
        silent = [i for i in moved if i not in set(low)]
        n = len(classified) or 1
        figures[name] = {
            "n": len(preds),
            "refused": (len(preds) - len(classified)) / len(preds),
            "low_confidence": len(low) / n,
            "band_changed": len(moved) / n,
            "band_changed_not_low_confidence": len(silent) / n,
        }
        f = figures[name]
        print(
            f"  {name:10s} {100 * f['refused']:5.1f}%  {100 * f['low_confidence']:5.1f}%  "
            f"{100 * f['band_changed']:5.1f}% ({100 * f['band_changed_not_low_confidence']:.1f}%)"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
