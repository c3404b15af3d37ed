"""A tiny classifier trained in seconds on squares in noise: model folders for the CLI tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def blob_image(rng: np.random.Generator, size: int, where: tuple[int, int] | None) -> np.ndarray:
    img = rng.normal(0.35, 0.05, (size, size)).clip(0, 1)
    if where is not None:
        r, c = where
        img[r : r + size // 6, c : c + size // 6] = 0.95
    return img.astype(np.float32)


def make_dataset(root: Path, per_label: int = 12, size: int = 96, seed: int = 0) -> Path:
    """Three labels told apart by where a bright square sits; a manifest with a source column."""
    rng = np.random.default_rng(seed)
    spots = {"normal": None, "covid": (10, 10), "pneumonia": (size - 30, size - 30)}
    rows = []
    for label, spot in spots.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            img = (blob_image(rng, size, spot) * 255).astype(np.uint8)
            name = f"{label}/{label}-{i}.png"
            Image.fromarray(img).save(root / name)
            rows.append([name, label, "site_a" if i % 2 else "site_b"])
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label", "source"], *rows])
    return root


def train_tiny(root: Path, per_label: int = 12) -> Path:
    """A 48-pixel model folder ``root/model`` trained for two epochs on ``make_dataset``."""
    from models.training import TrainConfig, train

    data = make_dataset(root / "data", per_label)
    out = root / "model"
    train(
        TrainConfig(
            data=[data],
            out=out,
            size=48,
            epochs=2,
            batch_size=8,
            progress=False,
            name="tiny",
            version="0.0.1",
            crop_lungs=False,  # squares on noise have no lungs: the whole image, as 1.x did
        )
    )
    return out
