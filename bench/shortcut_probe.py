"""How much does a model lean on age instead of lung findings? (An analysis, not a test.)

    .venv/bin/python bench/shortcut_probe.py --model models/default --data ../shared/data/cxr3

On the model's own held-out test split (``split.csv``), among **normal** radiographs only, it
asks how well each output (e.g. P(pneumonia): in cxr3 half of the pneumonia images are
children's; P(COVID-19): every COVID image is an adult's) tells children from adults. An AUROC
near 0.5 means the outputs carry no age information within one true class; near 1.0 (or 0.0)
means they do, i.e. the model has learned what a child's chest looks like as part of the
diagnosis. Images go through the serving path: image check, lung crop, classifier.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cxr3")
    parser.add_argument(
        "--split",
        type=Path,
        help="split.csv whose test normals to use (default: the model's own; give another "
        "model's to compare two models on the same images)",
    )
    args = parser.parse_args()

    import numpy as np

    from models.data import list_dataset, read_split
    from models.imaging import load_image
    from models.labels import canonical
    from models.loader import load_model
    from models.metrics import softmax
    from models.transfer_training import shortcut_probe

    model = load_model(args.model)
    samples = list_dataset(args.data, tuple(canonical(x) for x in model.labels))
    split = args.split or args.model / "split.csv"
    test = [s for s in read_split(split, samples)["test"] if s.label == "normal"]
    refusals, logits = [], []
    for i in range(0, len(test), 64):
        reasons, chunk = model.checked_logits([load_image(s.path) for s in test[i : i + 64]])
        refusals += reasons
        logits.append(chunk)
    kept = [i for i, reason in enumerate(refusals) if reason is None]
    probs = softmax(np.concatenate(logits), model.card.temperature)
    probe = shortcut_probe(probs, [test[i] for i in kept])
    print(
        f"normal test images: {len(kept)} of {len(test)} passed the image check "
        f"({probe['n_children']} pediatric, {probe['n_adults']} adult)"
    )
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
