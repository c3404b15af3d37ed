"""Training a model folder from a labelled image folder (``cxr-triage train``)."""

from __future__ import annotations

import csv
import logging
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models.architectures import (
    build_model,
    check_request,
    default_size,
    gradcam_layer,
    normalisation,
)
from models.card import WEIGHTS_FILE, ModelCard, sha256_of
from models.data import Sample, breakdown_columns, summarise
from models.imaging import load_image, prepare
from models.labels import LABELS
from models.lungs import LungModel, load_lung_model
from models.metrics import fit_temperature, softmax
from models.train_config import TrainConfig, dataset_and_split

logger = logging.getLogger(__name__)


def load_arrays(
    samples: list[Sample],
    size: int,
    progress: bool,
    desc: str,
    lungs: LungModel | None = None,
    intensity: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess every image once into ``(N, size, size, 1)`` float16 (the model's input).

    With a lung model, each image is cropped to its lungs as in serving; the second array says
    which images passed the image check (the others stay zero and must be dropped).
    """
    out = np.zeros((len(samples), size, size, 1), np.float16)
    ok = np.ones(len(samples), bool)
    for i, s in enumerate(
        tqdm(samples, desc=desc, unit="img", disable=not progress, file=sys.stderr, leave=False)
    ):
        image = load_image(s.path)
        crop = None
        if lungs is not None:
            (finding,) = lungs.find([image])
            ok[i], crop = finding.ok, finding.box
        if ok[i]:
            out[i] = prepare(image, size, crop, intensity)[0]
    return out, ok


def _label_ids(samples: list[Sample]) -> np.ndarray:
    return np.array([LABELS.index(s.label) for s in samples], np.int32)


def _class_weights(y: np.ndarray) -> dict[int, float]:
    counts = np.bincount(y, minlength=len(LABELS)).astype(float)
    present = counts > 0
    weights = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
    return {k: float(w) for k, w in enumerate(weights)}


def _augmenter(seed: int) -> Any:
    import keras
    from keras import layers

    # No flips: a mirrored chest puts the heart on the wrong side.
    return keras.Sequential(
        [
            layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed + 2),
            layers.RandomContrast(0.2, seed=seed + 3),
        ],
        name="augment",
    )


def _dataset(x: np.ndarray, y: np.ndarray, batch: int, *, train: bool, seed: int) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if train:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch).map(lambda a, b: (tf.cast(a, tf.float32), b))
    if train:
        augment = _augmenter(seed)
        ds = ds.map(
            lambda a, b: (tf.clip_by_value(augment(a, training=True), 0.0, 1.0), b),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


def train(cfg: TrainConfig) -> ModelCard:
    """Train, calibrate, evaluate on the held-out split and write the model folder.

    Checks the architecture, mode and weights before reading any image. With ``resume`` an
    interrupted run in the same ``out`` folder continues from its last epoch and split.
    """
    check_request(cfg.arch, cfg.mode, cfg.imagenet_weights)
    if cfg.arch == "xception" and cfg.mode in ("ec", "ft"):
        from models.transfer_training import train_transfer

        return train_transfer(cfg)
    size = cfg.size or default_size(cfg.arch)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    _, parts = dataset_and_split(cfg)
    lungs = load_lung_model(cfg.lung_model) if cfg.crop_lungs else None
    x: dict[str, np.ndarray] = {}
    for k, v in list(parts.items()):
        arr, ok = load_arrays(v, size, cfg.progress, f"loading {k}", lungs, cfg.intensity)
        x[k], parts[k] = arr[ok], [s for s, good in zip(v, ok, strict=True) if good]
    y = {k: _label_ids(v) for k, v in parts.items()}

    model = build_model(cfg.arch, cfg.mode, size, len(LABELS), cfg.imagenet_weights)
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=2),
        keras.callbacks.BackupAndRestore(str(cfg.out / "backup")),
        keras.callbacks.CSVLogger(str(cfg.out / "history.csv"), append=cfg.resume),
    ]
    history = model.fit(
        _dataset(x["train"], y["train"], cfg.batch_size, train=True, seed=cfg.seed),
        validation_data=_dataset(x["validation"], y["validation"], 64, train=False, seed=0),
        epochs=cfg.epochs,
        shuffle=False,  # the tf.data pipeline shuffles; fit's own flag does not apply
        class_weight=_class_weights(y["train"]),
        callbacks=callbacks,
        verbose=1 if cfg.progress and sys.stderr.isatty() else 2,
    )

    def logits_of(arr: np.ndarray) -> np.ndarray:
        fn = tf.function(lambda a: model(a, training=False))
        return np.concatenate(
            [
                np.asarray(fn(tf.constant(arr[i : i + 64], tf.float32)))
                for i in range(0, len(arr), 64)
            ]
        )

    temperature = fit_temperature(logits_of(x["validation"]), y["validation"])
    test_probs = softmax(logits_of(x["test"]), temperature)

    weights_path = cfg.out / WEIGHTS_FILE
    model.save(weights_path)
    card = ModelCard(
        name=cfg.name,
        version=cfg.version,
        architecture=cfg.arch,
        mode=cfg.mode,
        labels=list(LABELS),
        input_size=size,
        channels=1,
        normalisation=normalisation(cfg.arch),
        gradcam_layer=gradcam_layer(cfg.arch),
        temperature=temperature,
        crop="lungs" if lungs else "none",
        intensity=cfg.intensity,
        lung_model=(
            {
                "name": lungs.card.name,
                "version": lungs.card.version,
                "weights_sha256": lungs.card.weights_sha256,
            }
            if lungs
            else {}
        ),
        weights_sha256=sha256_of(weights_path),
        training={
            "data": ", ".join(Path(d).name for d in cfg.data),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "epochs_run": len(history.history.get("loss", [])),
            "config": cfg.for_card(),
            "split": {k: summarise(v) for k, v in parts.items()},
        },
    )
    from models.evaluation import evaluate_arrays, write_report

    columns = breakdown_columns(parts["test"])
    report = evaluate_arrays(y["test"], test_probs, list(LABELS), columns)
    report["split"] = "internal test (held out from training and calibration)"
    write_report(report, y["test"], test_probs, list(LABELS), cfg.out / "evaluation")
    card.metrics = {k: report[k] for k in ("n", "accuracy", "macro_auroc", "ece")}
    card.metrics["by_column"] = {
        col: {g: {"n": r["n"], "accuracy": r["accuracy"]} for g, r in groups.items()}
        for col, groups in report["by_column"].items()
    }
    card.save(cfg.out)
    from models.plots import training_curves

    training_curves(
        _history_from_csv(cfg.out / "history.csv") or history.history,
        cfg.out / "training_curves.png",
    )
    shutil.rmtree(cfg.out / "backup", ignore_errors=True)  # the run finished: nothing to resume
    logger.info("wrote %s (test accuracy %.3f)", cfg.out, report["accuracy"])
    return card


def _history_from_csv(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}
