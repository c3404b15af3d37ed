"""The lung model, the lung crop and the image check (tags lie: the pixels decide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.gradcam import overlay
from models.imaging import CropBox, Letterbox, colourful, is_colour, load_image, prepare
from models.lungs import DEFAULT_LUNG_DIR, NO_CHEST, PlausibilityRules, assess, load_lung_model
from tests.services import shared_file

CLI = [sys.executable, "-m", "worker.cli.main"]
HUMAN_CHESTS = (
    "cr_pa_chest_jpeg_baseline.dcm",
    "cr_pa_chest_monochrome1.dcm",
    "dx_chest_no_view_tags.dcm",
)


def _lungs_map(size: int = 128, *, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    prob = np.zeros((size, size), np.float32)
    for r0, r1, c0, c1 in boxes:
        prob[r0:r1, c0:c1] = 0.95
    return prob


PAIR = [(30, 100, 20, 58), (30, 100, 70, 108)]  # two lungs side by side, 128-px letterbox


def test_a_plausible_pair_of_lungs_passes_and_gives_a_crop_in_source_pixels() -> None:
    box = Letterbox.for_shape((1000, 800), 128)  # portrait film: padded left and right
    finding = assess(_lungs_map(boxes=PAIR), box)
    assert finding.ok, finding.reason
    crop = finding.box
    # The union of the two lungs (rows 30-100, columns 20-108 of 128) grown by 8%, mapped back.
    scale = 1000 / 128
    assert crop.top == pytest.approx((30 - 0.08 * 70) * scale, abs=2)
    assert crop.rows == pytest.approx((70 * 1.16) * scale, abs=3)
    assert crop.left == pytest.approx((20 - 0.08 * 88) * scale - 100, abs=2)
    assert crop.left >= 0 and crop.left + crop.cols <= 800


@pytest.mark.parametrize(
    ("boxes", "why"),
    [
        ([], "0 lung regions"),
        ([(30, 100, 20, 108)], "1 lung region"),
        ([(20, 50, 30, 90), (70, 110, 30, 90)], "side by side"),  # one above the other
        ([(30, 100, 20, 58), (30, 33, 90, 93)], "second lung"),  # a speck is no lung
        ([(5, 125, 2, 62), (5, 125, 66, 126)], "cover"),  # the whole image
        ([(10, 40, 20, 58), (85, 120, 70, 108)], "same height"),
    ],
)
def test_implausible_masks_are_refused_with_the_rule(
    boxes: list[tuple[int, int, int, int]], why: str
) -> None:
    finding = assess(_lungs_map(boxes=boxes), Letterbox.for_shape((512, 512), 128))
    assert not finding.ok
    assert finding.reason.startswith(NO_CHEST) and why in finding.reason
    assert finding.box == CropBox.whole((512, 512))


def test_an_uncertain_mask_is_refused() -> None:
    prob = _lungs_map(boxes=PAIR) * (0.6 / 0.95)
    finding = assess(prob, Letterbox.for_shape((512, 512), 128), rules=PlausibilityRules())
    assert not finding.ok and "uncertain" in finding.reason


def test_heatmaps_map_back_through_the_crop_to_the_whole_image() -> None:
    image = np.zeros((600, 400), np.float32)
    crop = CropBox(100, 50, 300, 250)
    tensor, box = prepare(image, 64, crop)
    assert tensor.shape == (64, 64, 1)
    heat = box.crop_to_source(np.ones((8, 8), np.float32))
    assert heat.shape == (600, 400)
    assert heat[100:400, 50:300].min() == pytest.approx(1.0)
    assert heat[:100].max() == 0 and heat[:, 300:].max() == 0
    half = box.crop_to_source(np.ones((8, 8), np.float32), shrink=2)
    assert half.shape == (300, 200) and half[50:200, 25:150].min() == pytest.approx(1.0)


def test_crop_sees_only_the_box() -> None:
    image = np.zeros((300, 300), np.float32)
    image[100:200, 100:200] = 1.0
    tensor, _ = prepare(image, 32, CropBox(100, 100, 100, 100))
    assert tensor.min() == pytest.approx(1.0)  # nothing of the black outside


def test_colour_pictures_are_told_from_grey_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.random((120, 100)).astype(np.float32)
    heat = np.zeros_like(grey)
    heat[30:90, 20:80] = 1.0
    coloured = overlay(grey, heat)
    grey_rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    assert colourful(coloured) and not colourful(grey_rgb)
    Image.fromarray(coloured).save(tmp_path / "heat.png")
    Image.fromarray(grey_rgb).save(tmp_path / "grey.png")
    assert is_colour(tmp_path / "heat.png") and not is_colour(tmp_path / "grey.png")


# --------------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def lungs():
    return load_lung_model()


def test_shipped_lung_model_folder_is_small_and_documented() -> None:
    card = json.loads((DEFAULT_LUNG_DIR / "card.json").read_text())
    size = sum(p.stat().st_size for p in DEFAULT_LUNG_DIR.iterdir() if p.is_file())
    assert size <= 5 * 1024 * 1024, f"{size} bytes"
    assert card["metrics"]["dice_mean"] >= 0.95
    assert card["metrics"]["check_refused_rate"] < 0.005
    assert "/work/" not in json.dumps(card) and "/home/" not in json.dumps(card)
    assert (DEFAULT_LUNG_DIR / "MODEL_CARD.md").is_file()


@pytest.mark.parametrize("name", HUMAN_CHESTS)
def test_the_human_chests_pass(lungs, name: str) -> None:
    (finding,) = lungs.find([load_image(shared_file(name))])
    assert finding.ok, finding.reason
    # The crop keeps most of the film's width (two lungs) but not all of it.
    assert finding.box.cols > 0.4 * load_image(shared_file(name)).shape[1]


def test_the_dog_is_refused_even_with_chest_pa_tags(lungs, tmp_path: Path) -> None:
    ds = pydicom.dcmread(shared_file("dx_canine_lateral_thorax.dcm"))
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.save_as(tmp_path / "dog_as_pa.dcm")
    (finding,) = lungs.find([load_image(tmp_path / "dog_as_pa.dcm")])
    assert not finding.ok and finding.reason.startswith(NO_CHEST)


def test_non_chest_images_are_refused(lungs) -> None:
    rng = np.random.default_rng(2)
    noise = rng.random((512, 512)).astype(np.float32)
    yy, xx = np.mgrid[:512, :512]
    skull = (((yy - 256) / 200) ** 2 + ((xx - 256) / 170) ** 2 < 1).astype(np.float32) * 0.8
    flat = np.full((400, 300), 0.5, np.float32)
    for image in (noise, skull, flat):
        (finding,) = lungs.find([image])
        assert not finding.ok, finding.measures


@pytest.mark.slow
def test_predict_refuses_a_colour_png_and_the_dog(tmp_path: Path) -> None:
    chest = load_image(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    heat = np.zeros_like(chest)
    heat[300:700, 200:500] = 1.0
    Image.fromarray(overlay(chest, heat)).save(tmp_path / "gradcam.png")
    proc = subprocess.run(
        [
            *CLI,
            "predict",
            "--json",
            str(tmp_path / "gradcam.png"),
            str(shared_file("dx_canine_lateral_thorax.dcm")),
            str(shared_file("cr_pa_chest_jpeg_baseline.dcm")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # refusals are not answers
    records = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert records[0]["refused"] == "image check: colour image, not a radiograph"
    assert records[1]["refused"].startswith(NO_CHEST)
    assert records[2]["label"] in ("normal", "covid", "pneumonia")
    assert "2 of 3 images refused" in proc.stderr
