"""A model folder compiled once to LiteRT flatbuffers, cached by content, served without TensorFlow.

Importing TensorFlow and tracing its graphs is most of a worker's start (docs/performance.md);
LiteRT's interpreter loads in a twentieth of a second. What is compiled:

- ``features.tflite``: the classifier from its input to the Grad-CAM layer (the last
  convolutional feature maps);
- ``head.npz``: what follows that layer, global average pooling then dense layers (dropout is
  the identity when serving), run in numpy; its gradient gives Grad-CAM without autodiff;
- ``lungs.tflite``: the lung model (logits; the sigmoid is applied here).

An entry's folder name carries a hash of everything it was made from (the weights' SHA-256s,
the Grad-CAM layer, the input size, this format's version), so a changed model never loads a
stale entry, and hosts or containers can share a cache. :func:`compile_model` checks the
compiled graphs against TensorFlow on probe inputs before it writes anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from models.card import ModelCard, sha256_of

if TYPE_CHECKING:
    from models.lungs import LungModel

logger = logging.getLogger(__name__)

#: What serves the model in a worker (``CXR_MODEL_RUNTIME``): LiteRT where it can, else
#: TensorFlow; or one of them.
Runtime = Literal["auto", "litert", "tensorflow"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)

#: Bumped when what an entry holds or means changes: older entries are then never loaded.
COMPILED_FORMAT = 1
MANIFEST = "compiled.json"
FEATURES_FILE = "features.tflite"
HEAD_FILE = "head.npz"
LUNGS_FILE = "lungs.tflite"

#: The most the compiled graphs may differ from TensorFlow on the probe inputs (logits,
#: probabilities of the lung map, heatmaps scaled to [0, 1]); float32 either way, so about 1e-5
#: is what they differ by.
TOLERANCE = 1e-3


class CompiledModelError(Exception):
    """A model that cannot be compiled, or a cache entry that is not what its manifest says."""


def runtime_available() -> bool:
    """Whether LiteRT's interpreter is installed (``pip install ai-edge-litert``)."""
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/cxr-triage/compiled``, ``~/.cache/cxr-triage/compiled`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cxr-triage" / "compiled"


# --------------------------------------------------------------------------- the head


@dataclass(frozen=True)
class Dense:
    """One dense layer: ``relu(x @ weight + bias)`` or without the ReLU."""

    weight: np.ndarray
    bias: np.ndarray
    relu: bool


@dataclass(frozen=True)
class Head:
    """Global average pooling over the Grad-CAM layer, then dense layers, to the logits."""

    steps: tuple[Dense, ...]

    def logits(self, pooled: np.ndarray) -> np.ndarray:
        x = pooled
        for step in self.steps:
            x = x @ step.weight + step.bias
            if step.relu:
                x = np.maximum(x, 0.0)
        return x

    def gradient(self, pooled: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """``d logits[n, classes[n]] / d pooled[n]`` for each row ``n``: backpropagation by hand."""
        pre = []
        x = pooled
        for step in self.steps:
            z = x @ step.weight + step.bias
            pre.append(z)
            x = np.maximum(z, 0.0) if step.relu else z
        grad = np.zeros_like(x)
        grad[np.arange(len(classes)), classes] = 1.0
        for step, z in zip(reversed(self.steps), reversed(pre), strict=True):
            if step.relu:
                grad = grad * (z > 0)
            grad = grad @ step.weight.T
        return grad

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {}
        for i, step in enumerate(self.steps):
            arrays[f"w{i}"] = step.weight.astype(np.float32)
            arrays[f"b{i}"] = step.bias.astype(np.float32)
            arrays[f"relu{i}"] = np.array(step.relu)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Head:
        with np.load(path) as f:
            n = sum(1 for k in f.files if k.startswith("w"))
            return cls(tuple(Dense(f[f"w{i}"], f[f"b{i}"], bool(f[f"relu{i}"])) for i in range(n)))


def read_head(keras_model: Any, gradcam_layer: str) -> Head:
    """The head after ``gradcam_layer``, or CompiledModelError where it is not pooling then dense
    layers (then only TensorFlow can compute its Grad-CAM)."""
    layers = list(keras_model.layers)
    names = [layer.name for layer in layers]
    if gradcam_layer not in names:
        raise CompiledModelError(f"no layer {gradcam_layer!r}")
    start = names.index(gradcam_layer)
    chain = layers[start + 1 :]
    previous = layers[start]
    if not chain or type(chain[0]).__name__ != "GlobalAveragePooling2D":
        raise CompiledModelError(f"{gradcam_layer!r} is not followed by global average pooling")
    steps = []
    for layer in chain:
        if layer.input is not previous.output:
            raise CompiledModelError(f"{layer.name!r} does not follow {previous.name!r} alone")
        kind = type(layer).__name__
        if kind == "Dense":
            activation = getattr(layer.activation, "__name__", "")
            if activation not in ("linear", "relu"):
                raise CompiledModelError(f"{layer.name!r}: activation {activation!r}")
            weight, bias = (np.asarray(w, np.float32) for w in layer.get_weights())
            steps.append(Dense(weight, bias, activation == "relu"))
        elif kind not in ("GlobalAveragePooling2D", "Dropout"):
            raise CompiledModelError(f"{layer.name!r} ({kind}) after the pooling")
        previous = layer
    if previous.output is not keras_model.output or not steps:
        raise CompiledModelError("the head does not end the model in a dense layer")
    return Head(tuple(steps))


def gradcam_from_features(
    features: np.ndarray, head: Head, skip_class: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, Grad-CAM maps and pooled features from the Grad-CAM layer's maps ``(N, h, w, k)``.

    The same maps as :func:`models.gradcam.gradcam_function`: pooling is an average, so the
    gradient of a class logit at every position of channel ``k`` is the gradient at the pooled
    feature divided by ``h * w``, and its spatial mean (Grad-CAM's channel weight) is that too.
    """
    pooled = features.mean(axis=(1, 2))
    logits = head.logits(pooled)
    ranked = logits.copy()
    if skip_class is not None:
        ranked[:, skip_class] = -np.inf
    classes = ranked.argmax(axis=1)
    weights = head.gradient(pooled, classes) / (features.shape[1] * features.shape[2])
    cam = np.maximum(np.einsum("nhwk,nk->nhw", features, weights), 0.0)
    top = cam.max(axis=(1, 2), keepdims=True)
    cam = np.divide(cam, top, out=np.zeros_like(cam), where=top > 0)
    return logits.astype(np.float32), cam.astype(np.float32), pooled.astype(np.float32)


# --------------------------------------------------------------------------- the graphs


class LiteGraph:
    """One ``.tflite`` graph, any batch size. Calls are serialised: an interpreter holds its
    tensors between ``set_tensor`` and ``get_tensor``."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self._interpreter = Interpreter(model_path=str(path), num_threads=threads or _cores())
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._shape: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, np.float32)
        with self._lock:
            if x.shape != self._shape:
                self._interpreter.resize_tensor_input(self._input, list(x.shape))
                self._interpreter.allocate_tensors()
                self._shape = x.shape
            self._interpreter.set_tensor(self._input, x)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output)  # a copy: safe past the lock


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class CompiledModel:
    """A cache entry, loaded: what :class:`models.loader.LiteEngine` and the lung model run."""

    folder: Path
    manifest: dict[str, Any]
    features: LiteGraph
    head: Head
    lungs: LiteGraph | None


def cache_key(card: ModelCard, lung_sha256: str | None) -> str:
    """What an entry is made from, hashed: any change gives another folder."""
    made_from = {
        "format": COMPILED_FORMAT,
        "weights_sha256": card.weights_sha256,
        "gradcam_layer": card.gradcam_layer,
        "input_size": card.input_size,
        "lungs_sha256": lung_sha256,
    }
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:16]


def entry_for(cache: Path, card: ModelCard, lung_sha256: str | None) -> Path:
    return cache / f"{card.name}-{card.version}-{cache_key(card, lung_sha256)}"


def load_compiled(entry: Path, *, verify: bool = True) -> CompiledModel:
    """Load a cache entry; CompiledModelError where it is missing, partial or altered."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CompiledModelError(f"{entry}: no readable {MANIFEST} ({exc})") from exc
    if manifest.get("format") != COMPILED_FORMAT:
        raise CompiledModelError(f"{entry}: format {manifest.get('format')}, not {COMPILED_FORMAT}")
    files: dict[str, str] = manifest.get("files", {})
    for name, digest in files.items():
        path = entry / name
        if not path.is_file():
            raise CompiledModelError(f"{path} is missing")
        if verify and sha256_of(path) != digest:
            raise CompiledModelError(f"{path}: SHA-256 does not match {MANIFEST}")
    if FEATURES_FILE not in files or HEAD_FILE not in files:
        raise CompiledModelError(f"{entry}: {MANIFEST} lists no {FEATURES_FILE} or {HEAD_FILE}")
    return _open(entry, manifest)


def _open(folder: Path, manifest: dict[str, Any]) -> CompiledModel:
    return CompiledModel(
        folder,
        manifest,
        LiteGraph(folder / FEATURES_FILE),
        Head.load(folder / HEAD_FILE),
        LiteGraph(folder / LUNGS_FILE) if LUNGS_FILE in manifest["files"] else None,
    )


def _tflite(keras_model: Any) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    # Keras prints the exported signature, a line per weight, to stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        return bytes(converter.convert())


def _probe(
    card: ModelCard, lungs: LungModel | None, n: int = 3
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs to compare the two runtimes on: noise, and smooth ramps with a dark band."""
    rng = np.random.default_rng(0)
    size = card.input_size
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    smooth = np.stack([np.outer(ramp, ramp), np.outer(ramp[::-1], ramp)])[..., None]
    smooth[:, :, size // 3 : size // 2] *= 0.2
    x = np.concatenate([rng.random((n - 2, size, size, 1), dtype=np.float32), smooth])
    if lungs is None:
        return x, None
    lsize = lungs.card.input_size
    return x, rng.random((2, lsize, lsize, 1), dtype=np.float32)


def compile_model(card: ModelCard, keras_model: Any, lungs: LungModel | None, cache: Path) -> Path:
    """Compile a model loaded with TensorFlow (its card, Keras model and lung model) into
    ``cache`` and return its entry.

    The compiled graphs are compared with TensorFlow on probe inputs first; an entry is written
    to a temporary folder and renamed into place, so a crash leaves no partial entry and two
    processes compiling at once both end with one good entry.
    """
    import keras

    if keras_model is None:
        raise CompiledModelError("compile from a model loaded with TensorFlow")
    started = time.monotonic()
    entry = entry_for(cache, card, lungs.card.weights_sha256 if lungs else None)
    head = read_head(keras_model, card.gradcam_layer)
    graphs = {
        FEATURES_FILE: keras.Model(
            keras_model.inputs, keras_model.get_layer(card.gradcam_layer).output
        )
    }
    if lungs is not None:
        graphs[LUNGS_FILE] = lungs.keras_model
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".compiling-", dir=cache))
    try:
        for name, graph in graphs.items():
            (work / name).write_bytes(_tflite(graph))
        head.save(work / HEAD_FILE)
        files = {p.name: sha256_of(p) for p in sorted(work.iterdir())}
        differences = _compare(card, keras_model, lungs, _open(work, {"files": files}))
        worst = max(differences.values())
        if not worst <= TOLERANCE:
            raise CompiledModelError(
                f"compiled graphs differ from TensorFlow by {worst:.2g} (> {TOLERANCE}): "
                f"{differences}; serve with CXR_MODEL_RUNTIME=tensorflow"
            )
        import tensorflow as tf

        manifest = {
            "format": COMPILED_FORMAT,
            "model": {"name": card.name, "version": card.version},
            "weights_sha256": card.weights_sha256,
            "lungs_sha256": lungs.card.weights_sha256 if lungs else None,
            "files": files,
            "max_difference_from_tensorflow": differences,
            "compiled_with": f"TensorFlow {tf.__version__}",
            "compiled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            work.rename(entry)
        except OSError:
            if not (entry / MANIFEST).is_file():
                raise
            # Another process finished the same entry first: theirs is as good as ours.
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "compiled %s %s into %s in %.1f s (largest difference from TensorFlow %.1g)",
        card.name,
        card.version,
        entry,
        time.monotonic() - started,
        worst,
    )
    return entry


def _compare(
    card: ModelCard, keras_model: Any, lungs: LungModel | None, compiled: CompiledModel
) -> dict[str, float]:
    """The largest absolute difference from TensorFlow, per output, on the probe inputs."""
    from models.gradcam import gradcam_function, unexplained_class

    x, lung_x = _probe(card, lungs)
    skip = unexplained_class(card.labels)
    logits, cams, _ = gradcam_function(keras_model, card.gradcam_layer, skip_class=skip)(x)
    lite_logits, lite_cams, _ = gradcam_from_features(compiled.features(x), compiled.head, skip)
    out = {
        "logits": float(np.abs(lite_logits - logits).max()),
        "heatmap": float(np.abs(lite_cams - cams).max()),
    }
    if lung_x is not None and lungs is not None and compiled.lungs is not None:
        from models.lungs import lite_lung_model

        lite = lite_lung_model(lungs.card, compiled.lungs).probabilities(lung_x)
        out["lung_map"] = float(np.abs(lite - lungs.probabilities(lung_x)).max())
    return out


def ensure_compiled(
    card: ModelCard, keras_model: Any, lungs: LungModel | None, cache: Path
) -> CompiledModel:
    """The model's entry in ``cache``, loaded; compiled first where it is missing or unreadable
    (another process may have compiled it meanwhile)."""
    entry = entry_for(cache, card, lungs.card.weights_sha256 if lungs else None)
    try:
        return load_compiled(entry)
    except CompiledModelError:
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
    # Just written and checked against TensorFlow: no need to hash it again.
    return load_compiled(compile_model(card, keras_model, lungs, cache), verify=False)
