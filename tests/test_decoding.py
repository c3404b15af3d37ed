"""Pixel decoding for compressed transfer syntaxes works with the installed plugins alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests import factories
from tests.services import require, shared_file


def _source(bits: int = 12) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = factories.radiograph(rows=128, columns=160, bits=bits, seed=7)
    return ds, ds.pixel_array.copy()


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_round_trip_through_a_file(syntax: str, tmp_path: Path) -> None:
    ds, original = _source()
    ds.compress(syntax)
    path = factories.write(ds, tmp_path / "c.dcm")
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(back.pixel_array, original)


def test_jpeg2000_lossy_decodes(tmp_path: Path) -> None:
    ds, original = _source()
    ds.compress(JPEG2000, j2k_cr=[20])
    back = pydicom.dcmread(factories.write(ds, tmp_path / "j2k.dcm"))
    assert back.pixel_array.shape == original.shape
    # Lossy at 20:1: close to the original (the chest phantom's edges cost ~1.6% of the range).
    top = (1 << int(ds.BitsStored)) - 1
    assert np.abs(back.pixel_array.astype(int) - original).mean() < 0.025 * top
    assert np.corrcoef(back.pixel_array.ravel(), original.ravel())[0, 1] > 0.98


@pytest.mark.parametrize("flag, syntax", [("+e1", JPEGLosslessSV1), ("+eb", JPEGBaseline8Bit)])
@pytest.mark.dcmtk
def test_jpeg_made_by_dcmtk_decodes(flag: str, syntax: str, tmp_path: Path) -> None:
    require(shutil.which("dcmcjpeg") is not None, "dcmtk dcmcjpeg is not installed")
    ds, original = _source(bits=8)
    src = factories.write(ds, tmp_path / "src.dcm")
    out = tmp_path / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", flag, str(src), str(out)], check=True, capture_output=True)
    back = pydicom.dcmread(out)
    assert back.file_meta.TransferSyntaxUID == syntax
    if syntax == JPEGLosslessSV1:
        np.testing.assert_array_equal(back.pixel_array, original)
    else:
        # dcmtk's lossy encoder may shift the values (and the window with them): compare shape.
        r = np.corrcoef(back.pixel_array.ravel().astype(float), original.ravel())[0, 1]
        assert r > 0.99


def test_real_jpeg_baseline_file_decodes() -> None:
    ds = pydicom.dcmread(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    pixels = ds.pixel_array
    assert pixels.shape == (1024, 1024) and pixels.dtype == np.uint8
    assert 20 < pixels.mean() < 235 and pixels.std() > 10  # an image, not a constant
