"""Frozen-trunk features of a labelled dataset, computed once and cached on disk.

Transfer learning on two CPU cores is only practical if the frozen part of the network runs once
per image, not once per epoch. For Xception the frozen part is everything below the last block
(``block14``): its output, 7×7×1024 at 224 px, is cached as float16 (~100 kB an image). EC
(frozen base + dense head) and FT (``block14`` unfrozen + head) both train from this cache, and
so does every leave-one-source-out fold. No augmentation is possible on cached features; the
lung crop removes most of what augmentation would otherwise hide.

Each image first goes through the same path as in serving: display values → lung model → image
check → crop to the lungs → letterbox → resize. Images the check refuses are kept in the index
with their reason (and no features): serving never classifies them either.

The cache folder's name carries the input size and the hashes of the lung model, the ImageNet
weights and the list of images, so a change in any of them starts a new cache. An interrupted
run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.architectures import XCEPTION_TOP_FIRST, full_model
from models.card import sha256_of
from models.data import Sample
from models.imaging import CropBox, load_image, prepare
from models.lungs import LungModel

logger = logging.getLogger(__name__)

#: The first layer that FT trains; everything below it is frozen and cached.
CHUNK = 32


@dataclass
class FeatureCache:
    """Cached trunk outputs for ``keys`` (rows of ``features`` where ``ok``)."""

    folder: Path
    keys: list[str]
    ok: np.ndarray  # (N,) bool: passed the image check
    reasons: list[str]
    boxes: np.ndarray  # (N, 4) crop box (top, left, rows, cols) in source pixels
    features: np.ndarray  # (N, h, w, c) float16, memory-mapped

    def index_of(self, samples: list[Sample]) -> np.ndarray:
        pos = {k: i for i, k in enumerate(self.keys)}
        return np.array([pos[s.key] for s in samples], int)


def trunk_model(size: int, imagenet_weights: Path) -> Any:
    """Xception with ImageNet weights, from our grey input up to ``block14``'s input."""
    import keras

    full = full_model("ec", size, imagenet_weights)
    return keras.Model(full.inputs, full.get_layer(XCEPTION_TOP_FIRST).input, name="trunk")


def _cache_folder(
    root: Path, samples: list[Sample], size: int, lung_sha: str, weights: Path, intensity: str
) -> Path:
    listing = hashlib.sha256("\n".join(s.key for s in samples).encode()).hexdigest()[:10]
    w = sha256_of(weights)[:10]
    eq = "" if intensity == "none" else f"-{intensity}"
    return Path(root) / f"xception-{size}{eq}-lungs{lung_sha[:10]}-w{w}-d{listing}"


def build_cache(
    samples: list[Sample],
    lungs: LungModel,
    imagenet_weights: Path,
    cache_root: Path,
    *,
    size: int = 224,
    intensity: str = "none",
    progress: bool = True,
) -> FeatureCache:
    """Compute (or continue, or just open) the feature cache for ``samples``."""
    import tensorflow as tf

    folder = _cache_folder(
        cache_root, samples, size, lungs.card.weights_sha256, imagenet_weights, intensity
    )
    folder.mkdir(parents=True, exist_ok=True)
    n = len(samples)
    # Built only when there is work: a complete cache opens without building Xception.
    trunk = None
    feat_path, done_path, meta_path = (
        folder / "features.npy",
        folder / "done.npy",
        folder / "index.json",
    )
    if feat_path.is_file() and done_path.is_file() and meta_path.is_file():
        features = np.load(feat_path, mmap_mode="r+")
        done = np.load(done_path)
        meta = json.loads(meta_path.read_text())
    else:
        trunk = trunk_model(size, imagenet_weights)
        shape = tuple(int(d) for d in trunk.output_shape[1:])
        features = np.lib.format.open_memmap(feat_path, "w+", np.float16, (n, *shape))
        done = np.zeros(n, bool)
        meta = {
            "keys": [s.key for s in samples],
            "ok": [False] * n,
            "reasons": [""] * n,
            "boxes": [[0, 0, 0, 0]] * n,
            "size": size,
        }
    todo = np.flatnonzero(~done)
    if len(todo):
        logger.info("feature cache %s: %d of %d images to compute", folder, len(todo), n)
        trunk = trunk or trunk_model(size, imagenet_weights)
        run = tf.function(lambda x: trunk(x, training=False), reduce_retracing=True)
        bar = tqdm(
            total=n,
            initial=n - len(todo),
            desc="lungs + Xception features",
            unit="img",
            disable=not progress,
            file=sys.stderr,
        )
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            images = [load_image(samples[i].path) for i in chunk]
            findings = lungs.find(images)
            batch, rows = [], []
            for i, image, f in zip(chunk, images, findings, strict=True):
                meta["ok"][i], meta["reasons"][i] = f.ok, f.reason
                b = f.box
                meta["boxes"][i] = [b.top, b.left, b.rows, b.cols]
                if f.ok:
                    batch.append(prepare(image, size, f.box, intensity)[0])
                    rows.append(i)
            if batch:
                out = np.asarray(run(tf.constant(np.stack(batch), tf.float32)))
                features[rows] = out.astype(np.float16)
            done[chunk] = True
            # Features first, then the record that they are there: a crash loses one chunk.
            if start % (CHUNK * 10) == 0 or start + CHUNK >= len(todo):
                features.flush()
                meta_path.write_text(json.dumps(meta))
                np.save(done_path, done)
            bar.update(len(chunk))
        bar.close()
        features.flush()
        meta_path.write_text(json.dumps(meta))
        np.save(done_path, done)
    return FeatureCache(
        folder,
        list(meta["keys"]),
        np.array(meta["ok"], bool),
        list(meta["reasons"]),
        np.array(meta["boxes"], int),
        np.load(feat_path, mmap_mode="r"),
    )


def crop_of(cache: FeatureCache, i: int) -> CropBox:
    top, left, rows, cols = (int(v) for v in cache.boxes[i])
    return CropBox(top, left, rows, cols)
