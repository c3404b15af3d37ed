"""Grad-CAM (Selvaraju et al. 2017) on the card's last convolutional layer, compiled."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.imaging import Letterbox


def unexplained_class(labels: list[str]) -> int | None:
    """The class a serving heatmap never explains: "normal" (None for a model without it)."""
    return labels.index("normal") if "normal" in labels else None


def gradcam_function(
    model: Any,
    layer_name: str,
    class_index: int | None = None,
    skip_class: int | None = None,
    pooled_layer: str | None = None,
) -> Any:
    """Return ``f(batch) -> (logits, cams, pooled)``: one compiled call gives all three.

    ``pooled`` is the output of ``pooled_layer`` (the features the familiarity index measures,
    :mod:`models.familiarity`), or None without one.

    ``cams`` are ``(N, h, w)`` maps over the model input (the padded square), each scaled to
    [0, 1], for the predicted class (or ``class_index``; with ``skip_class``, the most likely
    class other than that one: the serving model explains its top *finding*, also when
    "normal" is more likely, since a finding near its threshold is what a reader must see the
    evidence for). The heatmap is the ReLU of the feature maps weighted by the spatially
    averaged gradients of the class logit.
    """
    import keras
    import tensorflow as tf

    outputs = [model.get_layer(layer_name).output, model.output]
    if pooled_layer is not None:
        outputs.append(model.get_layer(pooled_layer).output)
    grad_model = keras.Model(model.inputs, outputs)

    # Any batch size through one trace: batches of studies vary in size.
    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    def run(x: Any) -> Any:
        with tf.GradientTape() as tape:
            features, logits, *pooled = grad_model(x, training=False)
            if class_index is None:
                ranked = logits
                if skip_class is not None:
                    mask = tf.one_hot(skip_class, tf.shape(logits)[1], on_value=-1e9, off_value=0.0)
                    ranked = logits + mask
                idx = tf.argmax(ranked, axis=1, output_type=tf.int32)
            else:
                idx = tf.fill([tf.shape(logits)[0]], class_index)
            score = tf.gather(logits, idx, axis=1, batch_dims=1)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
        top = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.math.divide_no_nan(cam, top)
        return logits, cam, pooled

    def call(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        logits, cam, pooled = run(tf.constant(batch, tf.float32))
        return np.asarray(logits), np.asarray(cam), np.asarray(pooled[0]) if pooled else None

    return call


def to_source(cam: np.ndarray, box: Letterbox, shrink: int = 1) -> np.ndarray:
    """A heatmap over the model input mapped back to the source image's rows and columns."""
    return np.clip(box.crop_to_source(cam, shrink), 0.0, 1.0)


def _colours(h: np.ndarray) -> np.ndarray:
    """A compact jet colormap, [0, 1] -> RGB in [0, 1]: blue -> cyan -> yellow -> red."""
    return np.concatenate(
        [
            np.clip(1.5 - np.abs(4 * h - 3), 0, 1),
            np.clip(1.5 - np.abs(4 * h - 2), 0, 1),
            np.clip(1.5 - np.abs(4 * h - 1), 0, 1),
        ],
        axis=-1,
    )


def colour_ramp(width: int = 256) -> np.ndarray:
    """The heatmap's drawn colours from low (the floor) to high as a ``(1, width, 3)`` uint8
    strip (the scale)."""
    h = np.linspace(FLOOR, 1.0, width)[None, :, None]
    return (_colours(h) * 255).astype(np.uint8)


#: Heat below this share of the map's maximum is not drawn: the radiograph shows through, so
#: weak evidence does not tint soft tissue, neck and shoulders blue.
FLOOR = 0.2


def overlay(
    image: np.ndarray, heatmap: np.ndarray | None, *, alpha: float = 0.45, floor: float = FLOOR
) -> np.ndarray:
    """RGB uint8 overlay of a [0, 1] heatmap on a [0, 1] grey image; the grey image alone when
    ``heatmap`` is None. Pixels with heat at or below ``floor`` stay grey; above it the colour
    fades in, so there is no hard edge at the floor."""
    grey = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=-1)
    if heatmap is None:
        return (grey * 255).astype(np.uint8)
    h = np.clip(heatmap, 0.0, 1.0)[..., None]
    weight = alpha * np.clip((h - floor) / (1.0 - floor), 0.0, 1.0)
    return ((1 - weight) * grey + weight * _colours(h)).clip(0, 1).__mul__(255).astype(np.uint8)
