"""Load a model folder, validate it against its card, and serve it through compiled functions."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from models.card import ModelCard, ModelCardError, sha256_of
from models.compiled import (
    RUNTIMES,
    CompiledModel,
    CompiledModelError,
    Runtime,
    default_cache,
    ensure_compiled,
    entry_for,
    gradcam_from_features,
    load_compiled,
    runtime_available,
)
from models.familiarity import FamiliarityError, FamiliarityIndex
from models.gradcam import gradcam_function, to_source, unexplained_class
from models.imaging import CropBox, Letterbox, prepare
from models.lungs import (
    DEFAULT_LUNG_DIR,
    LungCard,
    LungFinding,
    LungModel,
    lite_lung_model,
    load_lung_model,
)
from models.metrics import softmax

logger = logging.getLogger(__name__)

#: The model shipped with the product.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default"


#: Global average pooling: the features the familiarity index measures (models.architectures).
POOLED_LAYER = "pool"

#: The reason a colour picture is refused (a Grad-CAM overlay sent back in, a photo).
COLOUR_IMAGE = "image check: colour image, not a radiograph"


@dataclass
class Prediction:
    """One image's result, or why it was not classified (``refused``: label "" and no values)."""

    label: str
    probabilities: dict[str, float]
    heatmap: np.ndarray | None = None  # in the source image's geometry, [0, 1]
    refused: str | None = None
    crop: CropBox | None = None  # the lung box the model saw, in source pixels
    heatmap_label: str | None = None  # the class whose evidence ``heatmap`` shows
    #: Distance to the training data over the model's limit (>1: unlike it, low confidence);
    #: None for a model without a familiarity index.
    novelty: float | None = None


class KerasEngine:
    """Serving through TensorFlow: compiled ``tf.function``s over the Keras model."""

    name = "tensorflow"

    def __init__(self, keras_model: Any, gradcam_layer: str, skip_class: int | None) -> None:
        self.keras_model = keras_model
        self.gradcam_layer = gradcam_layer
        self.skip_class = skip_class
        self._predict_fn: Any = None
        self._cam_fn: Any = None

    @cached_property
    def pooled_layer(self) -> str | None:
        """The layer whose output the familiarity index measures (global average pooling)."""
        names = {layer.name for layer in self.keras_model.layers}
        return POOLED_LAYER if POOLED_LAYER in names else None

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import keras
        import tensorflow as tf

        if self._predict_fn is None:
            model = self.keras_model
            pooled = self.pooled_layer
            both = keras.Model(
                model.inputs,
                [model.output, model.get_layer(pooled).output if pooled else model.output],
            )
            spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
            # One trace for every batch size (see LoadedModel.warm_up).
            self._predict_fn = tf.function(
                lambda x: both(x, training=False), input_signature=[spec]
            )
        logits, features = self._predict_fn(tf.constant(batch, tf.float32))
        return np.asarray(logits), np.asarray(features) if self.pooled_layer else None

    def gradcam(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        if self._cam_fn is None:
            self._cam_fn = gradcam_function(
                self.keras_model,
                self.gradcam_layer,
                skip_class=self.skip_class,
                pooled_layer=self.pooled_layer,
            )
        return self._cam_fn(batch)


class LiteEngine:
    """Serving through LiteRT (:mod:`models.compiled`): no TensorFlow in the process."""

    name = "litert"

    def __init__(self, compiled: CompiledModel, skip_class: int | None) -> None:
        self.compiled = compiled
        self.skip_class = skip_class

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        pooled = self.compiled.features(batch).mean(axis=(1, 2))
        return self.compiled.head.logits(pooled), pooled

    def gradcam(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        features = self.compiled.features(batch)
        return gradcam_from_features(features, self.compiled.head, self.skip_class)


@dataclass
class LoadedModel:
    """A validated model and its card. Build with :func:`load_model` or :func:`load_serving`."""

    card: ModelCard
    keras_model: Any  # None when served by LiteRT
    folder: Path
    engine: KerasEngine | LiteEngine
    lungs: LungModel | None = None
    familiarity: FamiliarityIndex | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    def _inputs(
        self, images: list[np.ndarray], crops: list[CropBox | None]
    ) -> tuple[np.ndarray, list[Letterbox]]:
        prepared = [
            prepare(img, self.card.input_size, crop, self.card.intensity)
            for img, crop in zip(images, crops, strict=True)
        ]
        return np.stack([p[0] for p in prepared]), [p[1] for p in prepared]

    def check(
        self, images: list[np.ndarray], colour: list[bool] | None = None
    ) -> list[tuple[str | None, CropBox | None]]:
        """The image check: ``(refusal reason or None, lung crop or None)`` per image."""
        return [(reason, f.box if f else None) for reason, f in self._findings(images, colour)]

    def _findings(
        self, images: list[np.ndarray], colour: list[bool] | None = None
    ) -> list[tuple[str | None, LungFinding | None]]:
        """The image check with the lung model's finding (None without a lung model)."""
        colour = colour or [False] * len(images)
        out: list[tuple[str | None, LungFinding | None]] = [
            (COLOUR_IMAGE, None) if c else (None, None) for c in colour
        ]
        if self.lungs is None:
            return out
        todo = [i for i, (reason, _) in enumerate(out) if reason is None]
        for i, finding in zip(todo, self.lungs.find([images[i] for i in todo]), strict=True):
            out[i] = (None, finding) if finding.ok else (finding.reason, None)
        return out

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and pooled features (None without a pooling layer) for prepared inputs
        ``(N, size, size, 1)``, through one compiled function."""
        return self.engine.outputs(batch)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits for prepared inputs ``(N, size, size, 1)``."""
        return self.outputs(batch)[0]

    def novelty(self, features: np.ndarray | None, n: int) -> list[float | None]:
        """Each of ``n`` images' distance to the training data over the limit (None: no index
        or no features)."""
        if self.familiarity is None or features is None:
            return [None] * n
        return [float(v) for v in self.familiarity.novelty(features)]

    def _gradcam(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Logits, Grad-CAM maps and pooled features for prepared inputs, in one compiled call;
        the heatmap explains the most likely finding, never "normal" (see gradcam_function)."""
        return self.engine.gradcam(batch)

    def warm_up(self, image: np.ndarray, heatmap_shrink: int = 1) -> Prediction:
        """Build and run once the compiled functions a worker serves with: the lung check, and
        classification with Grad-CAM.

        A worker calls this before it takes tasks: the first call of each function traces its
        graph, which takes seconds. The logits-only function (:meth:`outputs`, for evaluation
        and ``predict`` without a heatmap) is left untraced: a worker never calls it, and
        tracing it cost 0.8 s of every worker's start. ``image`` ([0, 1], any size) runs through
        the check and through classification with Grad-CAM whether or not the check would
        refuse it; the prediction is returned (for warming up what comes after the model).
        """
        self.check([image])
        return self._classify([image], [None], True, [heatmap_shrink])[0]

    def checked_logits(
        self, images: list[np.ndarray], colour: list[bool] | None = None
    ) -> tuple[list[str | None], np.ndarray, np.ndarray | None]:
        """Batch evaluation: the check's refusal (or None) per image, and the kept ones' logits
        and pooled features (None without a pooling layer).

        The same check and crop as :meth:`predict`, without Grad-CAM or probabilities.
        """
        checks = self.check(images, colour)
        reasons = [reason for reason, _ in checks]
        kept = [i for i, (reason, _) in enumerate(checks) if reason is None]
        if not kept:
            return reasons, np.zeros((0, len(self.labels)), np.float32), None
        batch, _ = self._inputs([images[i] for i in kept], [checks[i][1] for i in kept])
        return (reasons, *self.outputs(batch))

    def predict(
        self,
        images: list[np.ndarray],
        *,
        heatmaps: bool = False,
        heatmap_shrink: int | Sequence[int] = 1,
        colour: list[bool] | None = None,
    ) -> list[Prediction]:
        """Check, then classify [0, 1] images (any size); optionally with Grad-CAM.

        Images that fail the image check (``colour`` flags from
        :func:`models.imaging.is_colour`; no plausible pair of lungs) come back refused, with
        the reason, and are never run through the classifier. ``heatmap_shrink`` returns each
        heatmap at the source geometry decimated by that integer factor (as
        :func:`models.imaging.decimate` shrinks the image), which is much cheaper for
        3000-pixel radiographs; one factor per image where the images come from several studies.
        All images go through the model in one call.
        """
        shrinks = (
            [heatmap_shrink] * len(images)
            if isinstance(heatmap_shrink, int)
            else list(heatmap_shrink)
        )
        if len(shrinks) != len(images):
            raise ValueError(f"{len(shrinks)} heatmap shrink factors for {len(images)} images")
        checks = self._findings(images, colour)
        kept = [i for i, (reason, _) in enumerate(checks) if reason is None]
        results: list[Prediction] = [Prediction("", {}, refused=reason) for reason, _ in checks]
        if kept:
            classified = self._classify(
                [images[i] for i in kept],
                [checks[i][1] for i in kept],
                heatmaps,
                [shrinks[i] for i in kept],
            )
            for i, pred in zip(kept, classified, strict=True):
                results[i] = pred
        return results

    def _classify(
        self,
        images: list[np.ndarray],
        findings: list[LungFinding | None],
        heatmaps: bool,
        shrinks: list[int],
    ) -> list[Prediction]:
        crops = [f.box if f else None for f in findings]
        batch, boxes = self._inputs(images, crops)
        if heatmaps:
            logits, cams, pooled = self._gradcam(batch)
        else:
            (logits, pooled), cams = self.outputs(batch), None
        probs = softmax(logits, self.card.temperature)
        novelty = self.novelty(pooled, len(probs))
        out = []
        classes = [k for k, lab in enumerate(self.labels) if lab != "normal"]
        for i, p in enumerate(probs):
            heat = to_source(cams[i], boxes[i], shrinks[i]) if cams is not None else None
            lungs = findings[i]
            if heat is not None and lungs is not None:
                # Evidence is drawn on the lungs only, fading out at the mask's edge.
                heat = heat * lungs.source_mask(shrinks[i])
            explained = self.labels[max(classes, key=lambda k: p[k])] if classes else None
            out.append(
                Prediction(
                    self.labels[int(p.argmax())],
                    {lab: float(v) for lab, v in zip(self.labels, p, strict=True)},
                    heat,
                    crop=crops[i],
                    heatmap_label=explained if heat is not None else None,
                    novelty=novelty[i],
                )
            )
        return out


def load_model(folder: Path | None = None, *, verify: bool = True) -> LoadedModel:
    """Load a model folder (the shipped default when None) with TensorFlow and check it against
    its card.

    Raises
    ------
    ModelCardError
        If the card is missing or invalid, the weights' SHA-256 differs from the card, or the
        model's input shape or number of outputs disagrees with the card.
    """
    folder = Path(folder) if folder is not None else DEFAULT_MODEL_DIR
    card = ModelCard.load(folder)
    weights = folder / card.weights_file
    if not weights.is_file():
        raise ModelCardError(f"{folder}: weights file {card.weights_file} is missing")
    if verify:
        digest = sha256_of(weights)
        if digest != card.weights_sha256:
            raise ModelCardError(
                f"{weights}: SHA-256 {digest[:16]}... does not match the card's "
                f"{card.weights_sha256[:16]}...: the weights were changed or the card is stale"
            )
    if importlib.util.find_spec("tensorflow") is None:
        raise ModuleNotFoundError(
            "TensorFlow is not installed: pip install 'cxr-triage[cpu]' (or '[gpu]' on an "
            "NVIDIA host); the node alone does not need it, workers and model commands do"
        )
    model = _load_weights(card, weights)
    expected_in = (card.input_size, card.input_size, 1)
    if tuple(model.input_shape[1:]) != expected_in:
        raise ModelCardError(
            f"{folder}: model input {tuple(model.input_shape[1:])} but card says {expected_in}"
        )
    if int(model.output_shape[-1]) != len(card.labels):
        raise ModelCardError(
            f"{folder}: model has {model.output_shape[-1]} outputs but the card lists "
            f"{len(card.labels)} labels {card.labels}"
        )
    try:
        model.get_layer(card.gradcam_layer)
    except ValueError as exc:
        raise ModelCardError(
            f"{folder}: Grad-CAM layer {card.gradcam_layer!r} not in model"
        ) from exc
    lungs = None
    if card.crop == "lungs":
        lungs = load_lung_model(_lung_dir(folder), verify=verify)
        _check_lungs(card, folder, lungs.card)
    familiarity = _familiarity_for(card, folder, verify)
    logger.info("loaded model %s %s from %s", card.name, card.version, folder)
    logger.info("TensorFlow devices: %s", _devices())
    engine = KerasEngine(model, card.gradcam_layer, unexplained_class(card.labels))
    return LoadedModel(card, model, folder, engine, lungs, familiarity)


def load_serving(
    folder: Path | None = None,
    *,
    runtime: Runtime = "auto",
    cache: Path | None = None,
    verify: bool = True,
) -> LoadedModel:
    """A worker's model: served by LiteRT from the compiled cache, without TensorFlow.

    The first load of a model compiles it into ``cache`` (:mod:`models.compiled`; TensorFlow
    once, 10-16 s); later loads, in any process, take the compiled entry. ``runtime``
    "tensorflow" serves with TensorFlow (a GPU host); "auto" falls back to it, with a log line,
    where LiteRT is not installed or the model's head cannot be compiled; "litert" raises then.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"model runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    folder = Path(folder) if folder is not None else DEFAULT_MODEL_DIR
    if runtime == "tensorflow":
        return load_model(folder, verify=verify)
    if not runtime_available():
        if runtime == "litert":
            raise ModuleNotFoundError(
                "LiteRT is not installed: pip install ai-edge-litert, or serve with "
                "CXR_MODEL_RUNTIME=tensorflow"
            )
        logger.info("LiteRT is not installed: serving with TensorFlow")
        return load_model(folder, verify=verify)
    # Not the weights' hash: what is served is the compiled entry, verified against its own
    # manifest and named from the card's hash; a miss loads (and checks) the weights.
    card = ModelCard.load(folder)
    lung_card = LungCard.load(_lung_dir(folder)) if card.crop == "lungs" else None
    if lung_card is not None:
        _check_lungs(card, folder, lung_card)
    cache = cache or default_cache()
    entry = entry_for(cache, card, lung_card.weights_sha256 if lung_card else None)
    try:
        compiled = load_compiled(entry, verify=verify)
    except CompiledModelError as why:
        logger.info(
            "compiling %s %s for LiteRT once (%s); later starts load it without TensorFlow",
            card.name,
            card.version,
            why,
        )
        model = load_model(folder, verify=verify)
        try:
            compiled = ensure_compiled(model.card, model.keras_model, model.lungs, cache)
        except CompiledModelError as exc:
            if runtime == "litert":
                raise
            logger.warning("serving %s with TensorFlow: %s", card.name, exc)
            return model
    lungs = lite_lung_model(lung_card, compiled.lungs) if lung_card and compiled.lungs else None
    if lung_card is not None and lungs is None:
        raise CompiledModelError(f"{compiled.folder}: no lung model compiled beside the classifier")
    familiarity = _familiarity_for(card, folder, verify)
    logger.info("loaded model %s %s from %s (LiteRT)", card.name, card.version, compiled.folder)
    engine = LiteEngine(compiled, unexplained_class(card.labels))
    return LoadedModel(card, None, folder, engine, lungs, familiarity)


def _lung_dir(folder: Path) -> Path:
    """The lung model the classifier was trained with: ``FOLDER/lungs`` or the shipped one."""
    return folder / "lungs" if (folder / "lungs").is_dir() else DEFAULT_LUNG_DIR


def _check_lungs(card: ModelCard, folder: Path, lungs: LungCard) -> None:
    expected = card.lung_model.get("weights_sha256")
    if expected and lungs.weights_sha256 != expected:
        raise ModelCardError(
            f"{folder}: trained on lung crops of lung model {expected[:16]}..., but "
            f"{_lung_dir(folder)} holds {lungs.weights_sha256[:16]}...: its crops would differ"
        )


def _familiarity_for(card: ModelCard, folder: Path, verify: bool) -> FamiliarityIndex | None:
    """The card's familiarity index (None when the card names none), checked like the weights."""
    if not card.familiarity:
        return None
    path = folder / str(card.familiarity.get("file", ""))
    if not path.is_file():
        raise ModelCardError(f"{folder}: familiarity index {path.name} is missing")
    if verify and sha256_of(path) != card.familiarity.get("sha256"):
        raise ModelCardError(f"{path}: SHA-256 does not match the card's familiarity.sha256")
    try:
        index = FamiliarityIndex.load(path)
    except FamiliarityError as exc:
        raise ModelCardError(str(exc)) from exc
    if card.familiarity.get("weights_sha256") != card.weights_sha256:
        raise ModelCardError(f"{path}: made from other weights' features than the card's")
    return index


def _devices() -> str:
    """What TensorFlow runs on (``CPU:0, GPU:0``): where a GPU host shows whether it is used."""
    import tensorflow as tf

    return ", ".join(d.name.replace("/device:", "") for d in tf.config.list_logical_devices())


def _load_weights(card: ModelCard, weights: Path) -> Any:
    """A ``.keras`` file, or float16 ``.npz`` weights set into the graph the card names."""
    import keras

    if weights.suffix != ".npz":
        return keras.models.load_model(weights, compile=False)
    if card.architecture != "xception" or card.mode not in ("ec", "ft"):
        raise ModelCardError(f"{weights}: .npz weights are for Xception ec/ft, not {card.mode}")
    from models.architectures import full_model

    model = full_model(card.mode, card.input_size)
    with np.load(weights) as arrays:
        values = [arrays[f"w{i:04d}"] for i in range(len(arrays.files))]
    if len(values) != len(model.weights):
        raise ModelCardError(
            f"{weights}: {len(values)} arrays for a graph of {len(model.weights)} weights"
        )
    model.set_weights([v.astype(np.float32) for v in values])
    return model


def save_weights_npz(model: Any, path: Path) -> None:
    """Every weight as float16, in graph order: half the size, the same predictions to ~1e-3."""
    np.savez(path, **{f"w{i:04d}": w.astype(np.float16) for i, w in enumerate(model.get_weights())})
