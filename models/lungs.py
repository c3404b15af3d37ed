"""Lung segmentation: a small U-Net, the lung box the classifier crops to, and the image check.

One model folder (``models/lungs/``: ``lungs.keras``, ``card.json``, ``MODEL_CARD.md``) serves
two jobs on every image before it is classified:

* **crop**: the classifier sees the lungs' bounding box with a margin, not the whole film, so
  text markers, collimation, shoulders and the patient's size (cues of hospital and age) carry
  less weight;
* **check**: tags lie, so an image whose mask shows no plausible pair of lungs (area, two
  components, side by side, in the middle of the film) is refused with a reason instead of
  being classified.

The U-Net sees the whole image letterboxed to ``input_size`` (the same letterbox as the
classifier), so its mask maps back to the source geometry exactly. TensorFlow is imported
lazily.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.card import ModelCardError, sha256_of
from models.imaging import CropBox, Letterbox, letterbox, load_image

logger = logging.getLogger(__name__)

#: The lung model shipped with the product.
DEFAULT_LUNG_DIR = Path(__file__).parent / "lungs"
LUNG_WEIGHTS_FILE = "lungs.keras"
LUNG_CARD_FILE = "card.json"

#: The refusal reason an image gets when the check fails; audit rows and ``predict`` say it.
NO_CHEST = "image check: no frontal chest found"


@dataclass(frozen=True)
class PlausibilityRules:
    """What a frontal chest's lung mask must look like (fractions of the letterboxed square).

    Chosen on the lungseg training masks (every real chest there passes, with room to spare);
    the refusal rate on the val split is reported in ``docs/model.md``.
    """

    min_lung_area: float = 0.015  # each of the two lungs
    min_total_area: float = 0.06
    max_total_area: float = 0.70
    min_separation: float = 0.10  # horizontal distance between the two lungs' centroids
    max_vertical_offset: float = 0.25  # vertical distance between them
    max_area_ratio: float = 6.0  # larger lung / smaller lung
    min_confidence: float = 0.75  # mean probability inside the mask
    # A fragmented mask is not a pair of lungs: of 2,091 real chests 99.5% have at most 6
    # regions and 1.1% of the mask outside the two lungs (bench/lung_check_margins.py); a dog's
    # lateral thorax: 16 regions, 24%.
    max_components: int = 10
    max_stray_fraction: float = 0.15


@dataclass
class LungFinding:
    """What the lung model found in one image."""

    ok: bool
    reason: str  # "" when ok; otherwise NO_CHEST and the failed rule
    box: CropBox  # lung box with margin (the whole image when not ok)
    mask: np.ndarray = field(repr=False)  # (input_size, input_size) bool over the letterbox
    measures: dict[str, float] = field(default_factory=dict)
    letterbox: Letterbox | None = field(default=None, repr=False)  # how ``mask`` maps back

    def source_mask(self, shrink: int = 1) -> np.ndarray:
        """The lung mask in the source image's geometry (decimated by ``shrink``), in [0, 1].

        Resized bilinearly from the model's square, so its edge is a soft ramp a few source
        pixels wide rather than a staircase: what a heatmap confined to it fades along.
        """
        if self.letterbox is None:
            raise ValueError("this finding has no letterbox to map its mask back with")
        return np.clip(self.letterbox.crop_to_source(self.mask.astype(np.float32), shrink), 0, 1)


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    return labels, int(n)


def assess(
    prob: np.ndarray,
    box: Letterbox,
    *,
    rules: PlausibilityRules | None = None,
    margin: float = 0.08,
) -> LungFinding:
    """Judge a lung probability map over the letterbox and compute the crop box.

    ``prob`` is ``(size, size)`` in [0, 1]. The crop box is the two lungs' bounding box grown
    by ``margin`` of its size on every side, in source pixels and clipped to the image.
    """
    rules = rules or PlausibilityRules()
    size = prob.shape[0]
    mask = prob > 0.5
    labels, n = _components(mask)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:] / float(size * size)
    order = np.argsort(areas)[::-1]
    measures: dict[str, float] = {"components": float(n), "total_area": float(areas.sum())}

    def refuse(why: str) -> LungFinding:
        return LungFinding(
            False, f"{NO_CHEST} ({why})", CropBox.whole(box.source_shape), mask, measures
        )

    if n < 2:
        return refuse(f"{n} lung region{'s' if n != 1 else ''} instead of 2")
    a, b = (int(order[0]) + 1, int(order[1]) + 1)
    area_a, area_b = float(areas[a - 1]), float(areas[b - 1])
    stray = 1.0 - (area_a + area_b) / float(areas.sum())
    measures.update(lung_area_1=area_a, lung_area_2=area_b, stray_fraction=stray)
    if n > rules.max_components or stray > rules.max_stray_fraction:
        return refuse(f"fragmented mask: {n} regions, {stray:.0%} outside the two largest")
    if area_b < rules.min_lung_area:
        return refuse(f"second lung covers {area_b:.1%} of the image")
    total = area_a + area_b
    if not rules.min_total_area <= total <= rules.max_total_area:
        return refuse(f"lungs cover {total:.0%} of the image")
    if area_a / area_b > rules.max_area_ratio:
        return refuse(f"one lung is {area_a / area_b:.1f}x the other")
    rows_a, cols_a = np.nonzero(labels == a)
    rows_b, cols_b = np.nonzero(labels == b)
    sep = abs(cols_a.mean() - cols_b.mean()) / size
    offset = abs(rows_a.mean() - rows_b.mean()) / size
    lungs = (labels == a) | (labels == b)
    confidence = float(prob[lungs].mean())
    measures.update(separation=sep, vertical_offset=offset, confidence=confidence)
    if sep < rules.min_separation:
        return refuse("the two regions are not side by side")
    if offset > rules.max_vertical_offset:
        return refuse("the two regions are not at the same height")
    if confidence < rules.min_confidence:
        return refuse(f"uncertain lung mask (mean probability {confidence:.2f})")

    rows = np.concatenate([rows_a, rows_b])
    cols = np.concatenate([cols_a, cols_b])
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    grow_r, grow_c = margin * (r1 - r0), margin * (c1 - c0)
    # Letterbox pixels -> source pixels.
    scale = box.side / size
    top = max(0, int((r0 - grow_r) * scale) - box.top)
    bottom = min(box.source_shape[0], int(np.ceil((r1 + grow_r) * scale)) - box.top)
    left = max(0, int((c0 - grow_c) * scale) - box.left)
    right = min(box.source_shape[1], int(np.ceil((c1 + grow_c) * scale)) - box.left)
    if bottom - top < 8 or right - left < 8:
        return refuse("the lung box is too small")
    crop = CropBox(top, left, bottom - top, right - left)
    return LungFinding(True, "", crop, mask, measures, box)


# --------------------------------------------------------------------------- the U-Net


def build_unet(size: int = 128, base: int = 16, depth: int = 4) -> Any:
    """A small U-Net: ``depth`` down/up levels, ``base`` filters doubling per level."""
    import keras
    from keras import layers

    def block(x: Any, filters: int, name: str) -> Any:
        for i in (1, 2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_c{i}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
            x = layers.Activation("relu", name=f"{name}_r{i}")(x)
        return x

    inputs = keras.Input((size, size, 1), name="image")
    skips = []
    x = inputs
    for level in range(depth):
        x = block(x, base * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = block(x, base * 2**depth, "bottom")
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(
            base * 2**level, 2, strides=2, padding="same", name=f"up{level}_t"
        )(x)
        x = layers.Concatenate(name=f"up{level}_cat")([x, skips[level]])
        x = block(x, base * 2**level, f"up{level}")
    logits = layers.Conv2D(1, 1, name="lung_logits")(x)
    return keras.Model(inputs, logits, name="lung_unet")


@dataclass
class LungCard:
    """``card.json`` of a lung model folder."""

    name: str
    version: str
    input_size: int
    weights_file: str = LUNG_WEIGHTS_FILE
    weights_sha256: str = ""
    architecture: str = "unet"
    preprocessing: str = (
        "the classifier's display values in [0, 1], letterboxed (black padding, centred) to a "
        "square and resized; output: one lung logit per pixel of the letterbox"
    )
    rules: dict[str, Any] = field(default_factory=lambda: asdict(PlausibilityRules()))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = (
        "Finding the lungs in frontal chest radiographs, to crop the classifier's input and to "
        "refuse images that show no frontal chest. Not for diagnostic use."
    )

    def save(self, folder: Path) -> None:
        (folder / LUNG_CARD_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")
        (folder / "MODEL_CARD.md").write_text(_lung_card_markdown(self))

    @classmethod
    def load(cls, folder: Path) -> LungCard:
        path = Path(folder) / LUNG_CARD_FILE
        if not path.is_file():
            raise ModelCardError(f"{folder} has no {LUNG_CARD_FILE}: not a lung model folder")
        try:
            return cls(**json.loads(path.read_text()))
        except TypeError as exc:
            raise ModelCardError(f"{path}: {exc}") from exc


def _lung_card_markdown(card: LungCard) -> str:
    m = card.metrics
    lines = [
        f"# Model card: {card.name} {card.version}",
        "",
        f"- Architecture: small U-Net, input {card.input_size}×{card.input_size}×1",
        f"- Weights: `{card.weights_file}`, SHA-256 `{card.weights_sha256}`",
        "",
        "## What it does",
        "",
        card.intended_use,
        "",
        "The classifier's input is cropped to the two lungs' bounding box (8% margin). An image "
        "whose mask is not a plausible pair of lungs is refused with "
        f"'{NO_CHEST} (<rule>)'. Rules (fractions of the letterboxed square): "
        + ", ".join(f"{k} {v}" for k, v in card.rules.items())
        + ".",
        "",
        "## Preprocessing",
        "",
        card.preprocessing,
        "",
        "## Training",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in card.training.items()]
    lines += ["", "## Results on the val split", ""]
    lines += [f"- {k}: {v}" for k, v in m.items()]
    lines.append("")
    return "\n".join(lines)


@dataclass
class LungModel:
    """A loaded lung model. Build with :func:`load_lung_model` (TensorFlow) or
    :func:`lite_lung_model` (LiteRT)."""

    card: LungCard
    keras_model: Any  # None when served by LiteRT
    rules: PlausibilityRules
    _fn: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    def probabilities(self, squares: np.ndarray) -> np.ndarray:
        """Lung probability maps for letterboxed inputs ``(N, size, size, 1)``."""
        if self._fn is None:
            self._fn = _keras_probabilities(self.keras_model)
        return self._fn(squares)[..., 0]

    def find(self, images: list[np.ndarray]) -> list[LungFinding]:
        """Assess a batch of [0, 1] images of any size."""
        if not images:
            return []
        size = self.card.input_size
        boxes = [letterbox(img, size) for img in images]
        probs = self.probabilities(np.stack([sq for sq, _ in boxes])[..., None])
        return [assess(p, b, rules=self.rules) for p, (_, b) in zip(probs, boxes, strict=True)]


def _keras_probabilities(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    fn = tf.function(lambda x: tf.sigmoid(model(x, training=False)), input_signature=[spec])
    return lambda squares: np.asarray(fn(tf.constant(squares, tf.float32)))


def lite_lung_model(card: LungCard, logits: Callable[[np.ndarray], np.ndarray]) -> LungModel:
    """A lung model served by a compiled graph that gives logits (:mod:`models.compiled`)."""
    return LungModel(
        card,
        None,
        PlausibilityRules(**card.rules),
        # tanh form: no overflow warning for very negative logits.
        lambda squares: 0.5 * (1.0 + np.tanh(0.5 * logits(squares))),
    )


def load_lung_model(folder: Path | None = None, *, verify: bool = True) -> LungModel:
    """Load a lung model folder (the shipped one when None) and check its weights' hash."""
    folder = Path(folder) if folder is not None else DEFAULT_LUNG_DIR
    card = LungCard.load(folder)
    weights = folder / card.weights_file
    if not weights.is_file():
        raise ModelCardError(f"{folder}: weights file {card.weights_file} is missing")
    if verify and sha256_of(weights) != card.weights_sha256:
        raise ModelCardError(f"{weights}: SHA-256 does not match the card: stale card or weights")
    import keras

    model = keras.models.load_model(weights, compile=False)
    if tuple(model.input_shape[1:]) != (card.input_size, card.input_size, 1):
        raise ModelCardError(f"{folder}: model input {model.input_shape} disagrees with the card")
    return LungModel(card, model, PlausibilityRules(**card.rules))


# --------------------------------------------------------------------------- training


@dataclass
class LungTrainConfig:
    data: Path
    out: Path
    size: int = 128
    base_filters: int = 12
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 2e-3
    seed: int = 0
    name: str = "cxr-triage-lungs"
    version: str = "1.0.0"
    limit: int | None = None
    progress: bool = True


def read_lungseg(data: Path) -> dict[str, list[tuple[Path, Path, str]]]:
    """``manifest.csv`` rows (image, mask, label) by split."""
    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: expected image,mask,label,split rows")
    parts: dict[str, list[tuple[Path, Path, str]]] = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            parts.setdefault(row["split"], []).append(
                (Path(data) / row["image"], Path(data) / row["mask"], row["label"])
            )
    return parts


def _load_pairs(
    rows: list[tuple[Path, Path, str]], size: int, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    x = np.zeros((len(rows), size, size, 1), np.float16)
    y = np.zeros((len(rows), size, size, 1), np.float16)
    for i, (img, msk, _) in enumerate(
        tqdm(rows, desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False)
    ):
        x[i, ..., 0] = letterbox(load_image(img), size)[0]
        with Image.open(msk) as m:
            mask = np.asarray(m.convert("L"), np.float32) / 255.0
        y[i, ..., 0] = letterbox(mask, size)[0] > 0.5
    return x, y


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2 * inter / total


def _augment_pair(seed: int) -> Any:
    import keras
    from keras import layers

    # Geometry is applied to image and mask together (two channels); zooming out teaches the
    # model whole films with shoulders and abdomen, as DICOM from scanners show them.
    return keras.Sequential(
        [
            layers.RandomRotation(0.04, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom((-0.15, 0.35), fill_mode="constant", seed=seed + 2),
        ],
        name="augment_pair",
    )


def train_lungs(cfg: LungTrainConfig) -> LungCard:
    """Train the U-Net on lungseg's train split, measure Dice and the check on val, save."""
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    parts = read_lungseg(cfg.data)
    train_rows, val_rows = parts.get("train", []), parts.get("val", [])
    if not train_rows or not val_rows:
        raise ValueError(f"{cfg.data}/manifest.csv needs train and val rows")
    if cfg.limit:
        train_rows, val_rows = train_rows[: cfg.limit], val_rows[: max(8, cfg.limit // 4)]
    x_tr, y_tr = _load_pairs(train_rows, cfg.size, cfg.progress, "loading train")
    x_va, y_va = _load_pairs(val_rows, cfg.size, cfg.progress, "loading val")

    augment = _augment_pair(cfg.seed)

    def aug(x: Any, y: Any) -> Any:
        both = augment(tf.concat([x, y], axis=-1), training=True)
        img = both[..., :1]
        # Contrast and brightness on the image only: scanners differ.
        gain = tf.random.uniform([tf.shape(img)[0], 1, 1, 1], 0.75, 1.3)
        gamma = tf.random.uniform([tf.shape(img)[0], 1, 1, 1], 0.7, 1.4)
        img = tf.clip_by_value(tf.pow(tf.clip_by_value(img, 1e-4, 1.0), gamma) * gain, 0.0, 1.0)
        return img, tf.cast(both[..., 1:] > 0.5, tf.float32)

    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_tr, y_tr))
        .shuffle(len(x_tr), seed=cfg.seed)
        .batch(cfg.batch_size)
        .map(lambda a, b: (tf.cast(a, tf.float32), tf.cast(b, tf.float32)))
        .map(aug, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices(
        (x_va.astype(np.float32), y_va.astype(np.float32))
    ).batch(32)

    def loss(y_true: Any, logits: Any) -> Any:
        bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits))
        p = tf.sigmoid(logits)
        inter = tf.reduce_sum(p * y_true, axis=(1, 2, 3))
        soft_dice = (2 * inter + 1) / (
            tf.reduce_sum(p, axis=(1, 2, 3)) + tf.reduce_sum(y_true, axis=(1, 2, 3)) + 1
        )
        return bce + tf.reduce_mean(1 - soft_dice)

    model = build_unet(cfg.size, cfg.base_filters)
    steps = cfg.epochs * int(np.ceil(len(x_tr) / cfg.batch_size))
    model.compile(
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps, alpha=0.05)
        ),
        loss=loss,
    )
    cfg.out.mkdir(parents=True, exist_ok=True)
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=cfg.epochs,
        shuffle=False,  # the tf.data pipeline shuffles; fit's own flag does not apply
        verbose=1 if cfg.progress and sys.stderr.isatty() else 2,
        callbacks=[keras.callbacks.CSVLogger(str(cfg.out / "history.csv"))],
    )
    weights = cfg.out / LUNG_WEIGHTS_FILE
    # An uncompiled copy: the optimizer's state would double the file and serves no one.
    shipped = build_unet(cfg.size, cfg.base_filters)
    shipped.set_weights(model.get_weights())
    shipped.save(weights)
    card = LungCard(cfg.name, cfg.version, cfg.size, weights_sha256=sha256_of(weights))
    lung_model = LungModel(card, model, PlausibilityRules())
    card.metrics = measure_on_split(lung_model, val_rows, cfg.progress)
    card.training = {
        "data": "lungseg (COVID-QU-Ex lung masks): train split",
        "rows": len(train_rows),
        "epochs": cfg.epochs,
        "base_filters": cfg.base_filters,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "minutes_on_this_machine": round((time.perf_counter() - started) / 60, 1),
        "command": (
            f"cxr-triage train-lungs --data ../shared/data/lungseg --out models/lungs "
            f"--epochs {cfg.epochs}"
        ),
    }
    card.save(cfg.out)
    return card


def measure_on_split(
    model: LungModel, rows: list[tuple[Path, Path, str]], progress: bool = False
) -> dict[str, Any]:
    """Dice at the masks' own resolution and the image check's refusals, per label."""
    from PIL import Image

    dices: list[float] = []
    refused: list[str] = []
    by_label: dict[str, list[float]] = {}
    for img_path, mask_path, label in tqdm(
        rows, desc="measuring", unit="img", disable=not progress, file=sys.stderr, leave=False
    ):
        image = load_image(img_path)
        square, box = letterbox(image, model.card.input_size)
        prob = model.probabilities(square[None, ..., None])[0]
        finding = assess(prob, box, rules=model.rules)
        if not finding.ok:
            refused.append(f"{img_path.name}: {finding.reason}")
        # Back to the mask's resolution before scoring: Dice at the model's 128 px would flatter.
        pred = box.crop_to_source(prob) > 0.5
        with Image.open(mask_path) as m:
            truth = np.asarray(m.convert("L")) > 127
        d = dice(pred, truth)
        dices.append(d)
        by_label.setdefault(label, []).append(d)
    return {
        "n": len(rows),
        "dice_mean": round(float(np.mean(dices)), 4),
        "dice_median": round(float(np.median(dices)), 4),
        "dice_by_label": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_label.items())},
        "check_refused": len(refused),
        "check_refused_rate": round(len(refused) / max(1, len(rows)), 4),
        "check_refused_examples": refused[:10],
    }
