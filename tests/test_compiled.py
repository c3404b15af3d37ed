"""The compiled model (models/compiled.py): LiteRT serves what TensorFlow serves, without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.compiled import (
    FEATURES_FILE,
    MANIFEST,
    CompiledModelError,
    Dense,
    Head,
    entry_for,
    gradcam_from_features,
    load_compiled,
    read_head,
)
from tests.tiny_model import blob_image, train_tiny

pytest.importorskip("ai_edge_litert", reason="LiteRT is part of the cpu extra")


def _head(rng: np.random.Generator) -> Head:
    return Head(
        (
            Dense(rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=5), relu=True),
            Dense(rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3), relu=False),
        )
    )


def test_the_head_gradient_is_the_finite_difference() -> None:
    rng = np.random.default_rng(0)
    head = _head(rng)
    pooled = rng.normal(size=(4, 6))
    classes = np.array([0, 2, 1, 2])
    grad = head.gradient(pooled, classes)
    eps = 1e-6
    for k in range(6):
        step = np.zeros(6)
        step[k] = eps
        up = head.logits(pooled + step)[np.arange(4), classes]
        down = head.logits(pooled - step)[np.arange(4), classes]
        np.testing.assert_allclose(grad[:, k], (up - down) / (2 * eps), rtol=1e-4, atol=1e-5)


def test_numpy_gradcam_is_tensorflows_through_a_hidden_layer() -> None:
    """The EC head (pool -> dense ReLU -> dropout -> logits) gives TensorFlow's Grad-CAM."""
    import keras
    from keras import layers

    from models.gradcam import gradcam_function

    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="maps")(inputs)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(6, activation="relu", name="hidden")(x)
    x = layers.Dropout(0.3)(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(x))
    batch = np.random.default_rng(1).random((5, 16, 16, 1), dtype=np.float32)
    logits, cams, pooled = gradcam_function(model, "maps", skip_class=0, pooled_layer="pool")(batch)
    features = keras.Model(inputs, model.get_layer("maps").output)(batch).numpy()
    ours = gradcam_from_features(features, read_head(model, "maps"), skip_class=0)
    np.testing.assert_allclose(ours[0], logits, atol=1e-5)
    np.testing.assert_allclose(ours[1], cams, atol=1e-5)
    np.testing.assert_allclose(ours[2], pooled, atol=1e-6)


def test_a_head_numpy_cannot_run_is_refused() -> None:
    import keras
    from keras import layers

    inputs = keras.Input((8, 8, 1))
    maps = layers.Conv2D(4, 3, name="maps")(inputs)
    softmax = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(maps))
    with pytest.raises(CompiledModelError, match="activation 'softmax'"):
        read_head(keras.Model(inputs, softmax), "maps")
    normed = layers.BatchNormalization()(layers.GlobalAveragePooling2D()(maps))
    with pytest.raises(CompiledModelError, match="BatchNormalization"):
        read_head(keras.Model(inputs, layers.Dense(3)(normed)), "maps")
    flat = layers.Dense(3)(layers.Flatten()(maps))
    with pytest.raises(CompiledModelError, match="global average pooling"):
        read_head(keras.Model(inputs, flat), "maps")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny"))


def _images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    spots = [(10, 10), (60, 60), None, (10, 60)]
    return [blob_image(rng, 96, spots[i % 4]) for i in range(n)]


@pytest.mark.slow
def test_the_compiled_model_predicts_what_tensorflow_does(tiny: Path, tmp_path: Path) -> None:
    from models.loader import LiteEngine, load_model, load_serving

    cache = tmp_path / "cache"
    served = load_serving(tiny, cache=cache)
    assert isinstance(served.engine, LiteEngine) and served.keras_model is None
    manifest = json.loads((served.engine.compiled.folder / MANIFEST).read_text())
    assert max(manifest["max_difference_from_tensorflow"].values()) < 1e-4
    reference = load_model(tiny).predict(_images(), heatmaps=True)
    for ours, theirs in zip(served.predict(_images(), heatmaps=True), reference, strict=True):
        assert ours.label == theirs.label and ours.heatmap_label == theirs.heatmap_label
        for label, p in theirs.probabilities.items():
            assert ours.probabilities[label] == pytest.approx(p, abs=1e-5)
        assert ours.heatmap is not None and theirs.heatmap is not None
        np.testing.assert_allclose(ours.heatmap, theirs.heatmap, atol=1e-4)


@pytest.mark.slow
def test_a_worker_process_serves_from_the_cache_without_tensorflow(
    tiny: Path, tmp_path: Path
) -> None:
    """The point of compiling: a fresh process loads and serves without importing TensorFlow;
    a changed file in the cache is refused and compiled again, never served."""
    from models.loader import load_serving

    cache = tmp_path / "cache"
    first = load_serving(tiny, cache=cache)  # compiles
    script = (
        "import sys; from pathlib import Path; from models.loader import load_serving; "
        "from tests.test_compiled import _images; "
        f"m = load_serving(Path({str(tiny)!r}), runtime='litert', cache=Path({str(cache)!r})); "
        "p = m.predict(_images(), heatmaps=True); "
        "print(m.engine.name, 'tensorflow' in sys.modules, p[0].label)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    engine, tensorflow, label = done.stdout.split()
    assert (engine, tensorflow) == ("litert", "False")
    assert label == first.predict(_images(), heatmaps=True)[0].label

    entry = first.engine.compiled.folder  # type: ignore[union-attr]
    features = entry / FEATURES_FILE
    blob = bytearray(features.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    features.write_bytes(bytes(blob))
    with pytest.raises(CompiledModelError, match="SHA-256 does not match"):
        load_compiled(entry)
    again = load_serving(tiny, cache=cache)
    assert again.engine.name == "litert"
    load_compiled(entry)  # compiled afresh in the same place: it verifies again


def test_a_missing_or_foreign_entry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CompiledModelError, match=r"no readable compiled\.json"):
        load_compiled(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 999, "files": {}}))
    with pytest.raises(CompiledModelError, match="format 999"):
        load_compiled(tmp_path)


def test_an_entry_names_everything_it_was_made_from(tmp_path: Path) -> None:
    from dataclasses import replace

    from models.card import ModelCard
    from models.loader import DEFAULT_MODEL_DIR

    card = ModelCard.load(DEFAULT_MODEL_DIR)
    entry = entry_for(tmp_path, card, "a" * 64)
    assert entry.parent == tmp_path and entry.name.startswith(f"{card.name}-{card.version}-")
    assert entry_for(tmp_path, card, "b" * 64) != entry  # another lung model
    assert entry_for(tmp_path, replace(card, weights_sha256="0" * 64), "a" * 64) != entry
    assert entry_for(tmp_path, replace(card, gradcam_layer="other"), "a" * 64) != entry


@pytest.mark.slow
def test_the_shipped_model_compiled_checks_and_classifies_as_tensorflow_does(
    tmp_path: Path,
) -> None:
    """The default model and its lung model: the same refusals, crops, probabilities,
    heatmaps and familiarity through LiteRT as through TensorFlow."""
    from dicom_node.synthetic import radiograph
    from models.imaging import dicom_to_image
    from models.loader import load_model, load_serving

    images = [dicom_to_image(radiograph(rows=1400, columns=1700, bits=16, seed=s)) for s in (1, 2)]
    images.append(np.random.default_rng(0).random((600, 500)))  # noise: no lungs, refused
    served = load_serving(cache=tmp_path)
    assert served.engine.name == "litert" and served.lungs is not None
    reference = load_model().predict(images, heatmaps=True, heatmap_shrink=2)
    ours = served.predict(images, heatmaps=True, heatmap_shrink=2)
    assert [p.refused for p in ours] == [p.refused for p in reference]
    assert ours[2].refused and not ours[0].refused
    for a, b in zip(ours[:2], reference[:2], strict=True):
        assert a.crop == b.crop and a.label == b.label
        for label, p in b.probabilities.items():
            assert a.probabilities[label] == pytest.approx(p, abs=1e-4)
        assert a.novelty == pytest.approx(b.novelty, abs=1e-3)
        assert a.heatmap is not None and b.heatmap is not None
        np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-3)
