"""Load a model folder, validate it against its card, and serve it through compiled functions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.card import ModelCard, ModelCardError, sha256_of
from models.gradcam import gradcam_function, to_source
from models.imaging import Letterbox, prepare
from models.metrics import softmax

logger = logging.getLogger(__name__)

#: The model shipped with the product.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default"


@dataclass
class Prediction:
    """One image's result."""

    label: str
    probabilities: dict[str, float]
    heatmap: np.ndarray | None = None  # in the source image's geometry, [0, 1]


@dataclass
class LoadedModel:
    """A validated model and its card. Build with :func:`load_model`."""

    card: ModelCard
    keras_model: Any
    folder: Path
    _predict_fn: Any = field(default=None, repr=False)
    _cam_fn: Any = field(default=None, repr=False)

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    def _inputs(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        prepared = [prepare(img, self.card.input_size) for img in images]
        return np.stack([p[0] for p in prepared]), [p[1] for p in prepared]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Logits for prepared inputs ``(N, size, size, 1)``, through one compiled function."""
        import tensorflow as tf

        if self._predict_fn is None:
            model = self.keras_model
            self._predict_fn = tf.function(
                lambda x: model(x, training=False), reduce_retracing=True
            )
        return np.asarray(self._predict_fn(tf.constant(batch, tf.float32)))

    def predict(
        self, images: list[np.ndarray], *, heatmaps: bool = False, heatmap_shrink: int = 1
    ) -> list[Prediction]:
        """Classify [0, 1] images (any size); optionally with Grad-CAM in source geometry.

        ``heatmap_shrink`` returns each heatmap at the source geometry decimated by that integer
        factor (as :func:`models.imaging.decimate` shrinks the image), which is much cheaper for
        3000-pixel radiographs.
        """
        batch, boxes = self._inputs(images)
        if heatmaps:
            if self._cam_fn is None:
                self._cam_fn = gradcam_function(self.keras_model, self.card.gradcam_layer)
            logits, cams = self._cam_fn(batch)
        else:
            logits, cams = self.logits(batch), None
        probs = softmax(logits, self.card.temperature)
        out = []
        for i, p in enumerate(probs):
            heat = to_source(cams[i], boxes[i], heatmap_shrink) if cams is not None else None
            out.append(
                Prediction(
                    self.labels[int(p.argmax())],
                    {lab: float(v) for lab, v in zip(self.labels, p, strict=True)},
                    heat,
                )
            )
        return out


def load_model(folder: Path | None = None, *, verify: bool = True) -> LoadedModel:
    """Load a model folder (the shipped default when None) and check it against its card.

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
    import keras

    model = keras.models.load_model(weights, compile=False)
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
    logger.info("loaded model %s %s from %s", card.name, card.version, folder)
    return LoadedModel(card, model, folder)
