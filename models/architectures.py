"""The thesis's model family: keras.applications bases as EC or FT, and a CNN from scratch.

* ``ec`` — "extract and classify": the ImageNet base is frozen and used as a feature extractor;
  a small dense head is trained (with augmentation).
* ``ft`` — fine-tuning: the same model with every layer trainable.
* ``scratch`` — the thesis's own design: residual blocks whose outputs are concatenated with
  their inputs (dense connections), small enough to train on two CPU cores.

The model's output is **logits**; probabilities are ``softmax(logits / T)`` with the temperature
``T`` from the model card. TensorFlow/Keras are imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.labels import LABELS


@dataclass(frozen=True)
class ArchSpec:
    """How to build and feed one keras.applications base."""

    builder: str  # attribute of keras.applications
    normalisation: str  # "tf", "caffe" or "torch": see _normalise
    gradcam_layer: str  # last convolutional feature map
    default_size: int


APPLICATIONS: dict[str, ArchSpec] = {
    "xception": ArchSpec("Xception", "tf", "block14_sepconv2_act", 299),
    "vgg16": ArchSpec("VGG16", "caffe", "block5_conv3", 224),
    "resnet50": ArchSpec("ResNet50", "caffe", "conv5_block3_out", 224),
    "inceptionv3": ArchSpec("InceptionV3", "tf", "mixed10", 299),
    "densenet121": ArchSpec("DenseNet121", "torch", "relu", 224),
}
ARCHITECTURES = (*APPLICATIONS, "residual_dense")
MODES = ("ec", "ft", "scratch")
SCRATCH_GRADCAM_LAYER = "gradcam_features"


class MissingWeightsError(RuntimeError):
    """ImageNet weights are needed but no local file was given (nothing is downloaded)."""


def check_request(arch: str, mode: str, imagenet_weights: Path | None) -> None:
    """Validate an architecture/mode/weights combination before any work is done.

    Raises
    ------
    ValueError
        For an unknown architecture or mode, or a mode the architecture does not support.
    MissingWeightsError
        When an ImageNet base is asked for without ``--imagenet-weights PATH``, or the file is
        missing: Keras would try to download the weights, and this machine must not.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if arch == "residual_dense":
        if mode != "scratch":
            raise ValueError("residual_dense is trained from scratch: use --mode scratch")
        return
    if mode == "scratch":
        return  # a keras.applications architecture with random weights
    if imagenet_weights is None:
        raise MissingWeightsError(
            f"--mode {mode} starts from ImageNet weights, and cxr-triage never downloads them: "
            f"pass --imagenet-weights PATH to a local '{APPLICATIONS[arch].builder}' no-top "
            "weights file (.h5 or .weights.h5), or use --mode scratch"
        )
    if not Path(imagenet_weights).is_file():
        raise MissingWeightsError(f"ImageNet weights file {imagenet_weights} does not exist")


def normalisation(arch: str) -> str:
    return "unit" if arch == "residual_dense" else APPLICATIONS[arch].normalisation


def default_size(arch: str) -> int:
    """Input side: the base's native size, 128 for the from-scratch CNN (2-core training)."""
    return 128 if arch == "residual_dense" else APPLICATIONS[arch].default_size


def gradcam_layer(arch: str) -> str:
    return SCRATCH_GRADCAM_LAYER if arch == "residual_dense" else APPLICATIONS[arch].gradcam_layer


def _residual_dense_block(x: Any, filters: int, name: str, momentum: float) -> Any:
    from keras import layers

    shortcut = x
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn2")(y)
    if shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    y = layers.Activation("relu", name=f"{name}_relu2")(y)
    # Dense connection: the block's input travels on beside its output.
    return layers.Concatenate(name=f"{name}_dense")([x, y])


def build_residual_dense(
    size: int,
    n_classes: int,
    widths: tuple[int, ...] = (16, 32, 64, 128),
    bn_momentum: float = 0.99,
) -> Any:
    """The from-scratch CNN: a stem, residual blocks with dense connections, pooling between.

    ``bn_momentum`` is BatchNormalization's moving-average momentum: lower it (e.g. 0.9) for
    runs of only a few hundred steps, or the inference-time statistics lag behind training.
    """
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Conv2D(widths[0], 5, strides=2, padding="same", use_bias=False, name="stem_conv")(
        inputs
    )
    x = layers.BatchNormalization(momentum=bn_momentum, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, width in enumerate(widths):
        x = _residual_dense_block(x, width, f"block{i + 1}", bn_momentum)
        if i < len(widths) - 1:
            x = layers.Conv2D(width, 1, use_bias=False, name=f"transition{i + 1}_conv")(x)
            x = layers.MaxPooling2D(2, name=f"transition{i + 1}_pool")(x)
    x = layers.Conv2D(widths[-1], 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="head_bn")(x)
    x = layers.Activation("relu", name=SCRATCH_GRADCAM_LAYER)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="residual_dense")


def _normalise(x: Any, mode: str) -> Any:
    """Grey [0, 1] -> the 3-channel input convention of a keras.applications base."""
    from keras import layers

    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if mode == "tf":
        return layers.Rescaling(2.0, offset=-1.0, name="normalise")(x)
    if mode == "torch":
        return layers.Normalization(
            mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2], name="normalise"
        )(x)
    # caffe: 0..255 minus the BGR means (grey, so channel order does not matter)
    x = layers.Rescaling(255.0, name="to_255")(x)
    return layers.Normalization(
        mean=[103.939, 116.779, 123.68], variance=[1.0, 1.0, 1.0], name="normalise"
    )(x)


def build_model(
    arch: str,
    mode: str,
    size: int,
    n_classes: int,
    imagenet_weights: Path | None = None,
) -> Any:
    """Build an uncompiled Keras model that outputs logits, after :func:`check_request`."""
    check_request(arch, mode, imagenet_weights)
    return build_graph(arch, mode, size, n_classes, imagenet_weights)


def build_graph(
    arch: str,
    mode: str,
    size: int,
    n_classes: int,
    imagenet_weights: Path | None = None,
) -> Any:
    """The graph of ``arch``/``mode``; ImageNet weights loaded into the base when a file is given.

    Without weights an ``ec``/``ft`` graph is what a saved model folder's weights are set into.
    """
    import keras
    from keras import layers

    if arch == "residual_dense":
        return build_residual_dense(size, n_classes)
    spec = APPLICATIONS[arch]
    inputs = keras.Input((size, size, 1), name="image")
    normalised = _normalise(inputs, spec.normalisation)
    # The base's layers are inlined into this model (input_tensor), so Grad-CAM can reach them.
    base = getattr(keras.applications, spec.builder)(
        include_top=False, weights=None, input_tensor=normalised
    )
    if mode in ("ec", "ft") and imagenet_weights is not None:
        base.load_weights(str(imagenet_weights))
    if mode == "ec":
        for layer in base.layers:
            layer.trainable = False
    x = layers.GlobalAveragePooling2D(name="pool")(base.output)
    if mode == "ec":
        x = layers.Dense(256, activation="relu", name="head_dense")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"{arch}_{mode}")


# --------------------------------------------------------------------------- Xception transfer

#: Xception's last block: fine-tuned ("ft") on top of the cached block13 output.
BLOCK14 = [
    "block14_sepconv1",
    "block14_sepconv1_bn",
    "block14_sepconv1_act",
    "block14_sepconv2",
    "block14_sepconv2_bn",
    "block14_sepconv2_act",
]
#: The head's layers after global average pooling (``pool``, which has no weights).
HEAD = {"ec": ["head_dense", "dropout", "logits"], "ft": ["dropout", "logits"]}
#: The first layer above the frozen trunk whose output the feature cache holds.
XCEPTION_TOP_FIRST = BLOCK14[0]


def full_model(mode: str, size: int, imagenet_weights: Path | None = None) -> Any:
    """The servable Xception EC/FT model with only the top trainable (see :func:`_top`)."""
    if mode not in HEAD:
        raise ValueError(f"transfer mode must be ec or ft, not {mode!r}")
    model = build_graph("xception", mode, size, len(LABELS), imagenet_weights)
    _freeze_below_top(model, mode)
    return model


def _freeze_below_top(model: Any, mode: str) -> None:
    trainable = set(HEAD[mode]) | (set(BLOCK14) if mode == "ft" else set())
    for layer in model.layers:
        layer.trainable = layer.name in trainable and not layer.name.endswith("_bn")
