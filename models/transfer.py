"""The thesis's transfer learning on cached features: Xception EC and FT, and their evaluation.

* **EC** (extract and classify): the whole ImageNet base is frozen; its pooled 2048-feature
  output feeds a dense head (256 ReLU, dropout, 3 logits).
* **FT** (fine-tune): the last block (``block14``, two separable convolutions) is trained with
  the head, starting from ImageNet weights; everything below stays frozen. Its BatchNorm
  statistics stay those of ImageNet (inference mode), as is usual with small batches.

Both train from :mod:`models.features`' cache, so an epoch takes seconds (EC) or about a minute
(FT) on two cores. The trained layers are then copied into the full servable model (grey input
→ lung-cropped letterbox → Xception → head), whose Grad-CAM layer is ``block14_sepconv2_act``.

:func:`leave_one_out` trains one model per value of a manifest column (``source``, ``age_group``)
without that value and tests on it: the selection criterion for the default model.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.architectures import BLOCK14, HEAD
from models.data import Sample
from models.features import FeatureCache
from models.labels import LABELS
from models.metrics import auroc, auroc_ci, classification_report, fit_temperature, softmax
from models.site_eval import operating_thresholds, site_figures, site_probe
from models.sites import SITE_COLUMN

logger = logging.getLogger(__name__)


@dataclass
class TopConfig:
    mode: str = "ft"  # "ec" or "ft"
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 3
    seed: int = 0
    progress: bool = True
    #: How strongly to even out sites within a class: each (site, label) stratum's images weigh
    #: n_stratum ** -balance (0: plain class weights; 1: every site counts the same).
    balance: float = 0.5


def _top(model: Any, mode: str, input_shape: tuple[int, ...]) -> Any:
    """A model over cached inputs that shares its layers (and weights) with ``model``."""
    import keras

    inputs = keras.Input(input_shape, name="cached")
    x = inputs
    # FT trains block14 on the cached block13 output; EC's input is already pooled.
    names = [*BLOCK14, "pool", *HEAD["ft"]] if mode == "ft" else HEAD["ec"]
    for name in names:
        x = model.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"top_{mode}")


def pooled_block14(model: Any, features: np.ndarray, batch: int = 256) -> np.ndarray:
    """EC's input: the frozen ``block14`` then global average pooling, over cached features."""
    import keras
    import tensorflow as tf

    inputs = keras.Input(features.shape[1:])
    x = inputs
    for name in [*BLOCK14, "pool"]:
        x = model.get_layer(name)(x)
    fn = tf.function(keras.Model(inputs, x), reduce_retracing=True)
    return np.concatenate(
        [
            np.asarray(fn(tf.constant(features[i : i + batch], tf.float32)))
            for i in range(0, len(features), batch)
        ]
    ).astype(np.float32)


def sample_weights(y: np.ndarray, sites: list[str], balance: float) -> np.ndarray:
    """Per-image loss weights: every class weighs the same in total, and within a class each
    site's share is evened out by ``balance`` (see :class:`TopConfig`). Mean weight 1.

    Site balance keeps the largest archive of a class (the Kaggle COVID folder, say) from
    defining the class, which is how a model learns the archive instead of the finding.
    """
    y = np.asarray(y)
    strata = [f"{label}|{site}" for label, site in zip(y.tolist(), sites, strict=True)]
    counts: dict[str, int] = {}
    for key in strata:
        counts[key] = counts.get(key, 0) + 1
    w = np.array([counts[key] ** -balance for key in strata], np.float64)
    present = sorted(set(y.tolist()))
    for k in present:
        w[y == k] *= 1.0 / w[y == k].sum()  # each class the same total
    return (w * len(y) / w.sum()).astype(np.float32)


def train_top(
    model: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: TopConfig,
    *,
    weights: np.ndarray | None = None,
) -> tuple[dict[str, list[float]], float]:
    """Train the top of ``model`` in place on cached inputs; return (history, temperature).

    ``weights`` (per training image, :func:`sample_weights`) default to plain class balance.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(cfg.seed)
    if weights is None:
        weights = sample_weights(y_train, [""] * len(y_train), 0.0)
    top = _top(model, cfg.mode, x_train.shape[1:])
    top.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    def ds(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> Any:
        if w is None:
            d = tf.data.Dataset.from_tensor_slices((x, y))
            return d.batch(cfg.batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b))
        d = tf.data.Dataset.from_tensor_slices((x, y, w)).shuffle(len(x), seed=cfg.seed)
        return d.batch(cfg.batch_size).map(lambda a, b, c: (tf.cast(a, tf.float32), b, c))

    history = top.fit(
        ds(x_train, y_train, weights),
        validation_data=ds(x_val, y_val, None),
        epochs=cfg.epochs,
        shuffle=False,  # the tf.data pipeline shuffles; fit's own flag does not apply
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.patience, restore_best_weights=True
            ),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1),
        ],
        verbose=1 if cfg.progress and sys.stderr.isatty() else 2,
    )
    temperature = fit_temperature(logits_of(top, x_val), y_val)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}, temperature


def logits_of(top: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    fn = tf.function(lambda a: top(a, training=False), reduce_retracing=True)
    return np.concatenate(
        [np.asarray(fn(tf.constant(x[i : i + batch], tf.float32))) for i in range(0, len(x), batch)]
    )


def inputs_for(model: Any, cache: FeatureCache, idx: np.ndarray, mode: str) -> np.ndarray:
    """What the top trains on: cached block13 output (FT) or pooled frozen block14 (EC)."""
    feats = np.asarray(cache.features[np.sort(idx)])[np.argsort(np.argsort(idx))]
    return pooled_block14(model, feats) if mode == "ec" else feats


# --------------------------------------------------------------------------- leave one out


def _held_out_aurocs(
    y: np.ndarray, probs: np.ndarray, held: np.ndarray, rng: np.random.Generator
) -> dict[str, Any]:
    """Per class present in the held-out group: its held-out positives vs every test negative."""
    out: dict[str, Any] = {}
    for k, label in enumerate(LABELS):
        pos = held & (y == k)
        if not pos.any():
            continue
        use = pos | (y != k)
        yy, pp = (y[use] == k).astype(int), probs[use, k]
        out[label] = {
            "n_held_out": int(pos.sum()),
            "auroc": auroc(yy, pp),
            "auroc_ci95": auroc_ci(yy, pp, 300, rng),
            "sensitivity": float((probs[pos].argmax(1) == k).mean()),
        }
    return out


def leave_one_out(
    samples: list[Sample],
    parts: dict[str, list[Sample]],
    cache: FeatureCache,
    column: str,
    make_model: Callable[[], Any],
    cfg: TopConfig,
) -> dict[str, Any]:
    """Train without each value of ``column``; test on it (plus the other values' test split).

    The test set of a fold is every checked image of the held-out group **and** the internal
    test split of the other groups (never trained on): a group rarely holds all three classes,
    and an AUROC needs negatives. The fold's headline numbers are the held-out group's own:
    for each class it holds, the AUROC of its images against every test image of another class,
    and the share it gets right. A fold whose training would lack a class is reported as not
    estimable instead of being run.
    """
    key_part = {s.key: name for name, items in parts.items() for s in items}
    usable = [s for s, ok in zip(samples, cache.ok[cache.index_of(samples)], strict=True) if ok]
    # Read (and for EC, pool through the frozen ImageNet block14) once: the same in every fold.
    row = {s.key: i for i, s in enumerate(usable)}
    x_all = inputs_for(make_model(), cache, cache.index_of(usable), cfg.mode)
    groups = sorted({s.columns.get(column, "") for s in usable})
    rng = np.random.default_rng(cfg.seed)
    folds: dict[str, Any] = {}
    for group in groups:
        train = [s for s in usable if s.columns.get(column) != group and key_part[s.key] != "test"]
        test = [s for s in usable if s.columns.get(column) == group or key_part[s.key] == "test"]
        missing = sorted(set(LABELS) - {s.label for s in train})
        if missing:
            folds[group] = {
                "estimable": False,
                "reason": f"without {column}={group} no training image is {', '.join(missing)}",
                "n_held_out": sum(s.columns.get(column) == group for s in usable),
            }
            continue
        order = rng.permutation(len(train))
        n_val = max(len(LABELS), len(train) // 10)
        val = [train[i] for i in order[:n_val]]
        fit = [train[i] for i in order[n_val:]]
        model = make_model()
        parts_of = (("fit", fit), ("val", val), ("test", test))
        y = {name: np.array([LABELS.index(s.label) for s in v]) for name, v in parts_of}
        x = {name: x_all[[row[s.key] for s in v]] for name, v in parts_of}
        logger.info(
            "fold %s=%s: train %d, val %d, test %d", column, group, len(fit), len(val), len(test)
        )
        _, temperature = train_top(model, x["fit"], y["fit"], x["val"], y["val"], cfg)
        probs = softmax(
            logits_of(_top(model, cfg.mode, x["test"].shape[1:]), x["test"]), temperature
        )
        held = np.array([s.columns.get(column) == group for s in test])
        report = classification_report(y["test"], probs, list(LABELS), n_boot=300)
        held_labels = sorted({s.label for s in test if s.columns.get(column) == group})
        folds[group] = {
            "estimable": True,
            "n_train": len(fit),
            "n_test": len(test),
            "n_held_out": int(held.sum()),
            "held_out_labels": held_labels,
            "held_out": _held_out_aurocs(y["test"], probs, held, rng),
            "held_out_accuracy": float((probs[held].argmax(1) == y["test"][held]).mean()),
            "test_macro_auroc": report["macro_auroc"],
            "test_macro_auroc_ci95": report["macro_auroc_ci95"],
            "test_per_class_auroc": {k: v["auroc"] for k, v in report["per_class"].items()},
        }
    estimable = [f for f in folds.values() if f["estimable"]]
    held_aurocs = [
        c["auroc"] for f in estimable for c in f["held_out"].values() if c["auroc"] is not None
    ]
    return {
        "column": column,
        "mode": cfg.mode,
        "folds": folds,
        # The selection figure: the mean, over folds and the classes each holds, of the held-out
        # images' AUROC. Macro over what exists, since no group holds every class.
        "mean_held_out_auroc": float(np.mean(held_aurocs)) if held_aurocs else None,
        "mean_test_macro_auroc": (
            float(np.mean([f["test_macro_auroc"] for f in estimable])) if estimable else None
        ),
    }


# --------------------------------------------------------------------- leave one site out


def leave_one_site_out(
    samples: list[Sample],
    parts: dict[str, list[Sample]],
    cache: FeatureCache,
    make_model: Callable[[], Any],
    cfg: TopConfig,
    *,
    max_false_flag: float,
    sites: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train without each site; judge the model on that site's normal **and** abnormal films.

    A fold trains on the other sites' train split (site-balanced, :func:`sample_weights`),
    calibrates its temperature and picks its operating thresholds on their validation split
    (:func:`models.site_eval.operating_thresholds`), exactly as the shipped model is made, then
    reports the held-out site's figures at those thresholds and the site probe (its normals
    against the trained sites' test normals). Only sites with normal and abnormal films can be
    held out; the others (COVID-QU-Ex has no normals) always train. The selection figure is the
    **worst** held-out site, never the mean.
    """

    def site(s: Sample) -> str:
        return s.columns.get(SITE_COLUMN, "")

    key_part = {s.key: name for name, items in parts.items() for s in items}
    usable = [s for s, ok in zip(samples, cache.ok[cache.index_of(samples)], strict=True) if ok]
    row = {s.key: i for i, s in enumerate(usable)}
    x_all = inputs_for(make_model(), cache, cache.index_of(usable), cfg.mode)
    labels_of: dict[str, set[str]] = {}
    for s in usable:
        labels_of.setdefault(site(s), set()).add(s.label)
    candidates = [
        g for g in sorted(labels_of) if "normal" in labels_of[g] and len(labels_of[g]) > 1
    ]
    if sites:
        unknown = sorted(set(sites) - set(candidates))
        if unknown:
            raise ValueError(
                f"cannot hold out {unknown}: a held-out site needs normal and abnormal "
                f"films ({', '.join(candidates)} have both)"
            )
        candidates = list(sites)
    folds: dict[str, Any] = {}
    for group in candidates:

        def keep(s: Sample, part: str, group: str = group) -> bool:
            return site(s) != group and key_part[s.key] == part

        fit = [s for s in usable if keep(s, "train")]
        val = [s for s in usable if keep(s, "validation")]
        test = [s for s in usable if site(s) == group or key_part[s.key] == "test"]
        missing = sorted(set(LABELS) - {s.label for s in fit}) or (
            ["normal"] if not any(s.label == "normal" for s in val) else []
        )
        if missing:
            folds[group] = {
                "estimable": False,
                "reason": f"without site {group}, training or validation has no "
                + ", ".join(missing),
            }
            continue
        parts_of = (("fit", fit), ("val", val), ("test", test))
        y = {name: np.array([LABELS.index(s.label) for s in v]) for name, v in parts_of}
        x = {name: x_all[[row[s.key] for s in v]] for name, v in parts_of}
        logger.info("fold site=%s: train %d, val %d, test %d", group, len(fit), len(val), len(test))
        model = make_model()
        weights = sample_weights(y["fit"], [site(s) for s in fit], cfg.balance)
        _, temperature = train_top(
            model, x["fit"], y["fit"], x["val"], y["val"], cfg, weights=weights
        )
        top = _top(model, cfg.mode, x["test"].shape[1:])
        val_probs = softmax(logits_of(top, x["val"]), temperature)
        thresholds = operating_thresholds(
            val_probs, y["val"], [site(s) for s in val], max_false_flag=max_false_flag
        )
        probs = softmax(logits_of(top, x["test"]), temperature)
        held = np.array([site(s) == group for s in test])
        held_samples = [s for s in test if site(s) == group]
        figures = site_figures(
            probs[held],
            y["test"][held],
            thresholds,
            sources=[s.columns.get("source", "") for s in held_samples],
            seed=cfg.seed,
        )
        seen = site_figures(probs[~held], y["test"][~held], thresholds, n_boot=0)
        folds[group] = {
            "estimable": True,
            "n_train": len(fit),
            "n_validation": len(val),
            "n_held_out": int(held.sum()),
            "temperature": temperature,
            "held_out": figures,
            "trained_sites_test": {
                "n": seen["n"],
                "macro_auroc": seen["macro_auroc"],
                "false_covid_rate": seen["false_covid_rate"],
                "covid_sensitivity": seen["per_class"].get("covid", {}).get("sensitivity"),
            },
            "probe": site_probe(probs, y["test"], [site(s) for s in test], group),
        }
        logger.info(
            "fold site=%s held out: macro AUROC %s, false COVID %s, COVID sensitivity %s, probe %s",
            group,
            figures["macro_auroc"],
            figures["false_covid_rate"],
            figures["per_class"].get("covid", {}).get("sensitivity"),
            folds[group]["probe"]["p_covid_either_way"],
        )
    return {
        "column": SITE_COLUMN,
        "mode": cfg.mode,
        "balance": cfg.balance,
        "max_false_flag": max_false_flag,
        "folds": folds,
        "worst": worst_site(folds),
    }


def worst_site(folds: dict[str, Any]) -> dict[str, Any]:
    """The selection figures: each one's worst value over held-out sites, and which site."""

    def pick(values: dict[str, float | None], worst: Callable[..., Any]) -> dict[str, Any]:
        known = {k: v for k, v in values.items() if v is not None}
        if not known:
            return {"value": None, "site": None}
        site = worst(known, key=known.__getitem__)
        return {"value": known[site], "site": site}

    folds = {g: f for g, f in folds.items() if f["estimable"]}
    held = {g: f["held_out"] for g, f in folds.items()}
    return {
        "macro_auroc": pick({g: h["macro_auroc"] for g, h in held.items()}, min),
        "false_covid_rate": pick({g: h["false_covid_rate"] for g, h in held.items()}, max),
        "specificity": pick(
            {g: h["per_class"].get("normal", {}).get("specificity") for g, h in held.items()}, min
        ),
        "covid_sensitivity": pick(
            {g: h["per_class"].get("covid", {}).get("sensitivity") for g, h in held.items()}, min
        ),
        "pneumonia_sensitivity": pick(
            {g: h["per_class"].get("pneumonia", {}).get("sensitivity") for g, h in held.items()},
            min,
        ),
        "probe_p_covid": pick({g: f["probe"]["p_covid_either_way"] for g, f in folds.items()}, max),
        "ece": pick({g: h["ece"] for g, h in held.items()}, max),
    }
