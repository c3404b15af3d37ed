"""Training, model folders, the loader's checks, Grad-CAM and the predict/evaluate commands."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.architectures import (
    SCRATCH_GRADCAM_LAYER,
    MissingWeightsError,
    build_residual_dense,
    check_request,
)
from models.card import ModelCard, ModelCardError
from models.gradcam import gradcam_function
from models.labels import LABELS
from models.loader import DEFAULT_MODEL_DIR, KerasEngine, load_model
from models.training import TrainConfig, train
from tests.services import shared_file
from tests.tiny_model import blob_image, make_dataset, train_tiny

CLI = [sys.executable, "-m", "worker.cli.main"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("cls"))


@pytest.mark.slow
def test_training_writes_a_complete_model_folder(trained: Path) -> None:
    for name in (
        "model.keras",
        "card.json",
        "MODEL_CARD.md",
        "split.csv",
        "history.csv",
        "training_curves.png",
        "evaluation/evaluation.json",
        "evaluation/by_group.png",
        "evaluation/reliability.png",
        "evaluation/roc.png",
        "evaluation/confusion_matrix.png",
    ):
        assert (trained / name).is_file(), name
    card = ModelCard.load(trained)
    assert card.labels == list(LABELS) and card.input_size == 48 and card.temperature > 0
    assert card.training["epochs_run"] == 2
    assert set(card.metrics["by_column"]) == {"source", "site"}  # site derived from source
    report = json.loads((trained / "evaluation" / "evaluation.json").read_text())
    assert {"n", "accuracy", "macro_auroc", "per_class", "by_column"} <= set(report)
    with open(trained / "split.csv") as fh:
        splits = [r["split"] for r in csv.DictReader(fh)]
    # Per label: round(12 * 0.2) = 2 test, round(10 * 0.1) = 1 validation, 9 train.
    assert (splits.count("test"), splits.count("validation"), len(splits)) == (6, 3, 36)


@pytest.mark.slow  # its module fixture trains a model: 16 s on 2 cores
def test_save_load_predict_round_trip(trained: Path) -> None:
    model = load_model(trained)
    rng = np.random.default_rng(9)
    images = [blob_image(rng, 200, None), blob_image(rng, 150, (10, 10))]
    preds = model.predict(images, heatmaps=True)
    for p, img in zip(preds, images, strict=True):
        assert p.label in LABELS
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.heatmap is not None and p.heatmap.shape == img.shape
    again = load_model(trained).predict(images)
    for a, b in zip(preds, again, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


@pytest.mark.slow  # its module fixture trains a model: 16 s on 2 cores
def test_card_mismatches_are_refused(trained: Path, tmp_path: Path) -> None:
    import shutil

    def variant(**changes: object) -> Path:
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(trained, folder)
        card = ModelCard.load(folder)
        for k, v in changes.items():
            setattr(card, k, v)
        card.save(folder)
        return folder

    with pytest.raises(ModelCardError, match="SHA-256"):
        load_model(variant(weights_sha256="0" * 64))
    with pytest.raises(ModelCardError, match="input"):
        load_model(variant(input_size=64))
    with pytest.raises(ModelCardError, match="labels"):
        load_model(variant(labels=["normal", "abnormal"]))
    with pytest.raises(ModelCardError, match="Grad-CAM layer"):
        load_model(variant(gradcam_layer="no_such_layer"))
    with pytest.raises(ModelCardError, match=r"no card\.json"):
        load_model(tmp_path)


def test_missing_imagenet_weights_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="--imagenet-weights"):
        check_request("xception", "ec", None)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        check_request("vgg16", "ft", tmp_path / "nope.h5")
    check_request("densenet121", "scratch", None)  # random init needs no download
    # The command refuses at once, even though the data folder does not exist either.
    proc = subprocess.run(
        [
            *CLI,
            "train",
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
            "--arch",
            "xception",
            "--mode",
            "ec",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "never downloads" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_gradcam_lights_up_the_region_that_decides() -> None:
    """A CNN trained to spot a bright square anywhere must put its heat on the square."""
    import keras

    rng = np.random.default_rng(1)
    size, n = 64, 400
    x = np.zeros((n, size, size, 1), np.float32)
    y = np.zeros(n, np.int32)
    for i in range(n):
        if i % 2:
            r, c = rng.integers(4, size - 16, 2)
            x[i, ..., 0] = blob_image(rng, size, None)
            x[i, r : r + 10, c : c + 10, 0] = 0.95
            y[i] = 1
        else:
            x[i, ..., 0] = blob_image(rng, size, None)
    keras.utils.set_random_seed(0)
    model = build_residual_dense(size, 2, widths=(8, 16, 32), bn_momentum=0.9)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    cam_fn = gradcam_function(model, SCRATCH_GRADCAM_LAYER, class_index=1)
    hits = 0
    trials = 10
    for _ in range(trials):
        r, c = rng.integers(4, size - 16, 2)
        img = blob_image(rng, size, None)
        img[r : r + 10, c : c + 10] = 0.95
        _, cams, _ = cam_fn(img[None, ..., None])
        from PIL import Image as _I

        cam = np.asarray(_I.fromarray(cams[0]).resize((size, size), _I.Resampling.BILINEAR))
        inside = cam[r : r + 10, c : c + 10].mean()
        outside = np.delete(
            cam.ravel(),
            np.ravel_multi_index(np.mgrid[r : r + 10, c : c + 10].reshape(2, -1), cam.shape),
        ).mean()
        pr, pc = np.unravel_index(cam.argmax(), cam.shape)
        # An 8x8 map over 64 pixels cannot be sharper than a few pixels: the peak must lie
        # within one square-width of the square, and the square must be hotter than the rest.
        near = r - 10 <= pr <= r + 20 and c - 10 <= pc <= c + 20
        hits += int(inside > 1.5 * outside and near)
    assert hits >= 8, f"Grad-CAM found the square in {hits} of {trials} images"


@pytest.mark.slow
def test_predict_and_evaluate_commands(trained: Path, tmp_path: Path) -> None:
    files = [str(shared_file("cr_pa_chest_jpeg_baseline.dcm"))]
    heat = tmp_path / "heat"
    proc = subprocess.run(
        [*CLI, "predict", "--model", str(trained), "--heatmap", str(heat), "--json", *files],
        capture_output=True,
        text=True,
        timeout=300,
        # Compiled here, not into the user's cache: a test model is never used again.
        env={**os.environ, "CXR_MODEL_CACHE": str(tmp_path / "compiled")},
    )
    assert proc.returncode == 0, proc.stderr
    assert list((tmp_path / "compiled").iterdir())  # served as a worker would: compiled
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["model"] == "tiny" and record["version"] == "0.0.1"
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # The label is the triage decision at the operating point (this model has none: 0.5).
    p = record["probabilities"]
    expected = "covid" if p["covid"] >= 0.5 else "pneumonia" if p["pneumonia"] >= 0.5 else "normal"
    assert record["label"] == expected and record["operating_point"].startswith("fallback")
    assert record["low_confidence"] is None  # no familiarity index: not assessed
    overlay = Image.open(record["heatmap"])
    # The SC's picture: the image, then the strip that says the result below it.
    assert overlay.mode == "RGB" and overlay.width == 1024 and overlay.height > 1024
    picture = np.asarray(overlay, dtype=np.int16)[:1024]
    coloured = (np.abs(picture[..., 0] - picture[..., 2]) > 8).any()
    assert coloured == (record["band"] != "not flagged")

    data = make_dataset(tmp_path / "external", per_label=4, seed=5)
    out_json = tmp_path / "eval.json"
    proc = subprocess.run(
        [
            *CLI,
            "evaluate",
            "--model",
            str(trained),
            "--data",
            str(data),
            "--json",
            str(out_json),
            "--plots",
            str(tmp_path / "plots"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out_json.read_text())
    assert report["n"] == 12 and set(report["by_column"]["source"]) == {"site_a", "site_b"}
    assert "by source:" in proc.stdout and (tmp_path / "plots" / "by_group.png").is_file()


def test_a_warm_worker_traced_only_what_it_serves_with() -> None:
    """Warm-up traces the check and classification with Grad-CAM; serving then needs no new
    graph, and the logits-only graph (evaluation, predict without a heatmap) is never built."""
    from dicom_node.synthetic import radiograph
    from models.imaging import dicom_to_image

    model = load_model()
    engine = model.engine
    assert isinstance(engine, KerasEngine)
    image = dicom_to_image(radiograph(rows=1400, columns=1700, bits=16, seed=1))
    warm = model.warm_up(image, heatmap_shrink=2)
    assert warm.heatmap is not None
    assert engine._cam_fn is not None and engine._predict_fn is None
    cam_fn = engine._cam_fn
    model.predict([image], heatmaps=True, heatmap_shrink=2)
    assert engine._cam_fn is cam_fn and engine._predict_fn is None


def test_shipped_default_model() -> None:
    if not (DEFAULT_MODEL_DIR / "card.json").is_file():
        pytest.fail("the default model folder models/default is missing")
    model = load_model()  # verifies SHA-256, input shape, labels, Grad-CAM layer, lung model
    card = model.card
    assert card.version == "3.0.0" and card.labels == list(LABELS)
    # It ships its operating point, chosen on validation data, and says what its labels mean.
    assert set(card.operating_point["thresholds"]) == {"covid", "pneumonia"}
    assert "siim_negative/normal" in card.training["split"]["train"]["by_source"]
    assert "Negative for Pneumonia" in card.label_definitions
    assert "group" not in card.metrics["by_column"]  # no breakdown by study
    assert card.architecture == "xception" and card.mode in ("ec", "ft")
    assert card.crop == "lungs" and model.lungs is not None
    assert card.lung_model["weights_sha256"] == model.lungs.card.weights_sha256
    text = (DEFAULT_MODEL_DIR / "card.json").read_text()
    assert "/work/" not in text and "/home/" not in text and "/root/" not in text
    assert "pneumonia-model-package" in card.training["imagenet_weights"]
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 50 * 1024 * 1024, f"models/default is {size / 2**20:.1f} MB"
    report = json.loads((DEFAULT_MODEL_DIR / "evaluation" / "evaluation.json").read_text())
    assert {"source", "age_group", "site"} <= set(report["by_column"])
    assert {"siim", "nih", "kaggle-adult", "kermany"} <= set(report["by_site_at_operating_point"])
    assert "shortcut_probe" in report
    rng = np.random.default_rng(0)
    (noise,) = model.predict([rng.random((300, 250)).astype(np.float32)], heatmaps=True)
    assert noise.refused and noise.label == "" and noise.heatmap is None


def test_default_model_reads_both_encodings_of_a_chest_alike() -> None:
    """MONOCHROME1 stored inverted, displayed the same: the same crop, the same answer."""
    model = load_model()
    from models.imaging import load_image

    images = [
        load_image(shared_file("cr_pa_chest_jpeg_baseline.dcm")),
        load_image(shared_file("cr_pa_chest_monochrome1.dcm")),
    ]
    a, b = model.predict(images, heatmaps=True)
    assert not a.refused and not b.refused
    assert a.crop == b.crop and a.label == b.label
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    assert a.heatmap is not None and a.heatmap.shape == images[0].shape
    # The heat lies inside the lung crop: nothing is mapped onto the padding or the edges.
    assert a.crop is not None
    outside = a.heatmap.copy()
    outside[a.crop.top : a.crop.top + a.crop.rows, a.crop.left : a.crop.left + a.crop.cols] = 0
    assert outside.max() == 0


def test_the_heatmap_stays_on_the_lungs_and_the_overlay_is_grey_elsewhere() -> None:
    """No colour outside the lung mask: not on the neck, the shoulders or the crop's edges."""
    from models.gradcam import overlay
    from models.imaging import load_image

    model = load_model()
    image = load_image(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    (pred,) = model.predict([image], heatmaps=True, heatmap_shrink=2)
    assert pred.heatmap is not None and pred.heatmap_label in ("covid", "pneumonia")
    (finding,) = model.lungs.find([image])  # type: ignore[union-attr]
    lungs = finding.source_mask(2)
    assert lungs.shape == pred.heatmap.shape
    outside = lungs < 1e-3
    assert outside.mean() > 0.3 and (pred.heatmap[outside] == 0).all()
    assert pred.heatmap[~outside].max() > 0.2  # there is heat to draw on the lungs
    from models.imaging import decimate

    rgb = overlay(decimate(image, 2), pred.heatmap).astype(int)
    tinted = (np.abs(rgb[..., 0] - rgb[..., 1]) > 2) | (np.abs(rgb[..., 1] - rgb[..., 2]) > 2)
    assert not tinted[outside].any()
    assert tinted[~outside].any()


def test_float16_npz_weights_predict_like_float32(tmp_path: Path) -> None:
    """The shipped weights are float16: set into the graph they must give the same answers."""
    from models.architectures import full_model
    from models.loader import save_weights_npz

    model = full_model("ec", 96)  # initialisers' weights: BatchNorm variances stay positive
    rng = np.random.default_rng(4)
    model.set_weights(
        [(w + rng.normal(size=w.shape) * 0.05).astype(np.float32) for w in model.get_weights()]
    )
    save_weights_npz(model, tmp_path / "w.npz")
    again = full_model("ec", 96)
    with np.load(tmp_path / "w.npz") as arrays:
        again.set_weights(
            [arrays[f"w{i:04d}"].astype(np.float32) for i in range(len(arrays.files))]
        )
    x = rng.random((2, 96, 96, 1)).astype(np.float32)
    a, b = np.asarray(model(x, training=False)), np.asarray(again(x, training=False))
    assert np.abs(a - b).max() < 0.05 * (np.abs(a).max() + 1e-6)


@pytest.mark.slow  # over 5 s on 2 cores (pytest --durations)
def test_ec_mode_loads_local_weights_and_freezes_the_base(tmp_path: Path) -> None:
    """EC/FT start from a local weights file (here one we write), never a download."""
    import keras

    from models.architectures import build_model

    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(3)
    base.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in base.get_weights()])
    weights = tmp_path / "densenet121_notop.weights.h5"
    base.save_weights(weights)

    ec = build_model("densenet121", "ec", 32, 3, weights)
    layer = ec.get_layer("conv1_conv")
    np.testing.assert_array_equal(
        layer.get_weights()[0], base.get_layer("conv1_conv").get_weights()[0]
    )
    assert not layer.trainable
    trainable = {w.path.split("/")[0] for w in ec.trainable_weights}
    assert trainable == {"head_dense", "logits"}
    ft = build_model("densenet121", "ft", 32, 3, weights)
    assert ft.get_layer("conv1_conv").trainable
    assert len(ft.trainable_weights) > len(ec.trainable_weights)


@pytest.mark.slow
def test_transfer_training_and_leave_one_source_out(tmp_path: Path) -> None:
    """Xception FT from the lung-cropped feature cache, its model folder, and crossval folds."""

    import keras

    from models.imaging import load_image
    from models.loader import load_model
    from models.transfer_training import crossval

    shared = shared_file("cr_pa_chest_jpeg_baseline.dcm").parents[1]
    if not (shared / "cxr3" / "manifest.csv").is_file():
        pytest.skip("../shared/data/cxr3 is not here")
    # 8 images of every label/source group, the old label name (viral_pneumonia) kept as it is;
    # the new sites' folder beside it, read together.
    folders = [
        _small_copy(shared / "cxr3", tmp_path / "cxr3-small", 8),
        _small_copy(shared / "cxr_sites", tmp_path / "sites-small", 6),
    ]
    # A local "ImageNet" file with random weights: the same code path, no download.
    base = keras.applications.Xception(include_top=False, weights=None, input_shape=(96, 96, 3))
    weights = tmp_path / "xception_notop.weights.h5"
    base.save_weights(weights)
    cfg = TrainConfig(
        data=folders,
        out=tmp_path / "ft",
        arch="xception",
        mode="ft",
        epochs=1,
        batch_size=16,
        validation_fraction=0.3,  # every site fold keeps normals to pick its thresholds on
        imagenet_weights=weights,
        cache=tmp_path / "cache",
        progress=False,
        name="tiny-ft",
        version="0.0.1",
    )
    card = train(cfg)
    assert card.crop == "lungs" and card.weights_file == "weights.npz"
    assert card.metrics["n"] >= 6 and "shortcut_probe" in card.metrics
    assert card.labels == list(LABELS)  # viral_pneumonia rows were read as pneumonia
    # The operating point is the card's; evaluation-only sources never trained.
    assert set(card.operating_point["thresholds"]) == {"covid", "pneumonia"}
    with open(cfg.out / "split.csv", newline="") as fh:
        split_rows = list(csv.DictReader(fh))
    atypical = [r for r in split_rows if "siim_atypical" in r["file"]]
    assert atypical and {r["split"] for r in atypical} == {"test"}
    report = json.loads((cfg.out / "evaluation" / "evaluation.json").read_text())
    assert {"siim", "nih", "kaggle-adult", "kermany"} <= set(report["by_site_at_operating_point"])
    model = load_model(cfg.out)
    (pred,) = model.predict([load_image(shared_file("cr_pa_chest_jpeg_baseline.dcm"))])
    assert pred.label in LABELS and pred.crop is not None
    # The same cache serves the folds: nothing is computed again.
    cached = sorted((tmp_path / "cache").rglob("features.npy"))
    assert len(cached) == 1
    before = cached[0].stat().st_mtime_ns
    result = crossval(cfg, "source")
    assert cached[0].stat().st_mtime_ns == before
    folds = result["folds"]
    assert {"kaggle", "kermany", "quex", "siim", "siim_negative", "nih"} <= set(folds)
    # The new sites bring normals: without Kaggle, training still has every class.
    assert folds["kaggle"]["estimable"]
    kermany = folds["kermany"]
    assert kermany["estimable"] and set(kermany["held_out"]) == {"pneumonia"}
    assert kermany["held_out"]["pneumonia"]["n_held_out"] == kermany["n_held_out"]
    assert result["mean_held_out_auroc"] is not None
    # By site: only hospitals with normal and abnormal films are held out (not COVID-QU-Ex).
    by_site = crossval(cfg, "site")
    assert set(by_site["folds"]) == {"kaggle-adult", "kermany", "nih", "siim"}
    siim = by_site["folds"]["siim"]
    assert siim["estimable"], siim
    assert siim["held_out"]["classes"] == ["normal", "covid"]
    assert set(siim["held_out"]["covid_sensitivity_by_source"]) == {
        "siim",
        "siim_atypical",
        "siim_indeterminate",
    }
    assert siim["probe"]["n_site"] == siim["held_out"]["per_class"]["normal"]["n"]
    assert by_site["worst"]["macro_auroc"]["site"] in by_site["folds"]


def _small_copy(source: Path, dest: Path, per_group: int) -> Path:
    """``per_group`` images of every label/source pair of a shared folder, with its manifest."""
    import shutil

    with open(source / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    taken: dict[tuple[str, str], int] = {}
    kept = []
    for row in rows:
        group = (row["label"], row["source"])
        if taken.get(group, 0) < per_group:
            taken[group] = taken.get(group, 0) + 1
            (dest / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / row["file"], dest / row["file"])
            kept.append(row)
    with open(dest / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return dest
