"""How much does a model lean on age instead of lung findings? (An analysis, not a test.)

    .venv/bin/python bench/shortcut_probe.py --model models/default --data ../shared/data/cxr3

On the model's own held-out test split (``split.csv``), among **normal** radiographs only, it
asks how well the model's probability of "viral pneumonia" (every such training image is a child)
and of "COVID-19" (every such image is an adult) tells children from adults. An AUROC near 0.5
means the outputs carry no age information within one true class; near 1.0 means they do, i.e.
the model has learned what a child's chest looks like as part of the diagnosis.
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
    args = parser.parse_args()

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from models.data import list_dataset, read_split
    from models.imaging import load_image, prepare
    from models.loader import load_model
    from models.metrics import softmax

    model = load_model(args.model)
    samples = list_dataset(args.data, tuple(model.labels))
    test = [s for s in read_split(args.model / "split.csv", samples)["test"] if s.label == "normal"]
    batch = np.stack([prepare(load_image(s.path), model.card.input_size)[0] for s in test])
    probs = softmax(
        np.concatenate([model.logits(batch[i : i + 64]) for i in range(0, len(batch), 64)]),
        model.card.temperature,
    )
    child = np.array([s.columns.get("age_group") == "pediatric" for s in test])
    print(f"normal test images: {len(test)} ({child.sum()} pediatric, {(~child).sum()} adult)")
    for label in model.labels:
        k = model.labels.index(label)
        auc = roc_auc_score(child, probs[:, k])
        print(
            f"P({label}) separates children from adults among normals: AUROC {auc:.3f}; "
            f"mean {probs[child, k].mean():.3f} (children) "
            f"vs {probs[~child, k].mean():.3f} (adults)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
