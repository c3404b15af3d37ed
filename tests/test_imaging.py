"""The one preprocessing path: DICOM and PNG/JPEG to the model's input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.imaging import Letterbox, UnreadableImageError, dicom_to_image, load_image, prepare
from tests import factories
from tests.services import shared_file


def test_true_monochrome1_encoding_displays_like_the_original() -> None:
    # The shared MONOCHROME1 file stores inverted values of the same radiograph: displayed
    # (inverted back), it must give the same image and the same model input as the JPEG one.
    original_ds = pydicom.dcmread(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    mono1_ds = pydicom.dcmread(shared_file("cr_pa_chest_monochrome1.dcm"))
    assert mono1_ds.PhotometricInterpretation == "MONOCHROME1"
    assert mono1_ds.SOPInstanceUID != original_ds.SOPInstanceUID
    assert mono1_ds.StudyInstanceUID == original_ds.StudyInstanceUID
    stored_1 = mono1_ds.pixel_array.astype(int)
    stored_2 = original_ds.pixel_array.astype(int)
    assert np.abs(stored_1 - (255 - stored_2)).mean() < 1  # stored values really are inverted
    original = load_image(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    mono1 = load_image(shared_file("cr_pa_chest_monochrome1.dcm"))
    assert original.shape == (1024, 1024)
    np.testing.assert_allclose(mono1, original, atol=1e-5)
    np.testing.assert_allclose(prepare(mono1, 224)[0], prepare(original, 224)[0], atol=1e-5)


def test_jpeg_baseline_and_implicit_files_decode() -> None:
    for name in ("cr_pa_chest_jpeg_baseline.dcm", "dx_chest_no_view_tags.dcm"):
        img = load_image(shared_file(name))
        assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
        assert img.std() > 0.05


def test_dicom_and_png_of_the_same_pixels_give_the_same_tensor(tmp_path: Path) -> None:
    ds = factories.radiograph(rows=300, columns=240, bits=8, seed=3)
    for kw in ("WindowCenter", "WindowWidth"):
        delattr(ds, kw)
    for kw in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if kw in ds:
            delattr(ds, kw)
    dcm = factories.write(ds, tmp_path / "a.dcm")
    png = tmp_path / "a.png"
    Image.fromarray(ds.pixel_array).save(png)
    a, _ = prepare(load_image(dcm), 128)
    b, _ = prepare(load_image(png), 128)
    assert a.shape == (128, 128, 1)
    np.testing.assert_array_equal(a, b)
    # RGB JPEG-like input of the same grey pixels: luminance equals the grey value.
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.repeat(ds.pixel_array[..., None], 3, axis=-1)).save(rgb)
    np.testing.assert_allclose(load_image(rgb), load_image(png), atol=1 / 255)


def test_sixteen_bit_dicom_and_png_match(tmp_path: Path) -> None:
    ds = factories.radiograph(rows=200, columns=200, bits=16, seed=4)
    del ds.WindowCenter, ds.WindowWidth
    dcm = factories.write(ds, tmp_path / "b.dcm")
    png = tmp_path / "b.png"
    Image.fromarray(ds.pixel_array.astype(np.uint16)).save(png)
    np.testing.assert_allclose(load_image(dcm), load_image(png), atol=1e-6)


def test_window_and_rescale_are_applied() -> None:
    ds = factories.radiograph(rows=64, columns=64, bits=12, seed=5)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 2000, 1000
    raw = ds.pixel_array.astype(np.float32) * 2 - 100
    expected = np.clip((raw - 1500) / 1000, 0, 1)
    np.testing.assert_allclose(dicom_to_image(ds), expected, atol=1e-6)


def test_letterbox_pads_and_maps_back() -> None:
    image = np.zeros((100, 200), np.float32)
    image[:, 150:] = 1.0  # bright right quarter
    x, box = prepare(image, 64)
    assert box == Letterbox((100, 200), 200, 50, 0, 64)
    assert x[:10].max() == 0 and x[-10:].max() == 0  # black padding above and below
    assert x[32, 60, 0] > 0.9 and x[32, 10, 0] == 0
    back = box.crop_to_source(x[..., 0])
    assert back.shape == (100, 200)
    assert back[:, 160:].mean() > 0.9 and back[:, :140].mean() < 0.05


def test_unreadable_files_are_explained(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match=r"x\.png"):
        load_image(bad)
    sr = factories.write(factories.structured_report(), tmp_path / "sr.dcm")
    with pytest.raises(UnreadableImageError, match="no pixel data"):
        load_image(sr)
    assert isinstance(pydicom.dcmread(sr), pydicom.Dataset)


def test_heatmap_and_image_shrink_to_the_same_grid() -> None:
    from models.imaging import decimate, shrink_factor

    image = np.random.default_rng(0).random((2500, 3000)).astype(np.float32)
    f = shrink_factor(image.shape, 1280)
    assert f == 3 and shrink_factor(image.shape, 0) == 1
    _, box = prepare(image, 128)
    heat = box.crop_to_source(np.ones((8, 8), np.float32), shrink=f)
    assert heat.shape == decimate(image, f).shape == (833, 1000)


def test_equalised_intensity_spreads_the_crop_and_keeps_the_padding_black() -> None:
    from models.imaging import CropBox, equalise

    # A dark, low-contrast "film" (a ramp over 0.2-0.4) in a wide frame.
    image = np.tile(np.linspace(0.2, 0.4, 200, dtype=np.float32), (120, 1))
    crop = CropBox(10, 20, 100, 160)
    x, _ = prepare(image, 64, crop, "equalised")
    plain, _ = prepare(image, 64, crop)
    assert x.shape == plain.shape == (64, 64, 1)
    assert (x[:6] == 0).all()  # letterbox padding (the crop is wider than tall) stays black
    inside = x[20:44]
    assert inside.max() - inside.min() > 0.8 > plain[20:44].max() - plain[20:44].min()
    ramp = np.linspace(0.3, 0.5, 1000, dtype=np.float32)
    eq = equalise(ramp)
    assert (np.diff(eq) >= 0).all() and eq[0] < 0.01 and eq[-1] > 0.99  # monotone, full range
    with pytest.raises(ValueError, match="intensity"):
        prepare(image, 64, crop, "clahe")


@pytest.mark.parametrize("factor", [1, 2, 3, 5])
def test_decimate_is_the_block_mean(factor: int) -> None:
    """Trailing rows and columns that do not fill a block go; each pixel is its block's mean."""
    from models.imaging import decimate

    image = np.random.default_rng(factor).random((103, 151)).astype(np.float32)
    rows, cols = 103 // factor, 151 // factor
    blocks = image[: rows * factor, : cols * factor].astype(np.float64)
    expected = blocks.reshape(rows, factor, cols, factor).mean(axis=(1, 3))
    got = decimate(image, factor)
    assert got.shape == (rows, cols) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
