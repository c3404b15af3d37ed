from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from dicom_node.integrity import MalformedDatasetError, read_header_checked
from tests import factories
from tests.services import shared_file


@pytest.fixture
def _check(tmp_path: Path) -> Callable[[bytes], Dataset]:
    def check(data: bytes) -> Dataset:
        path = tmp_path / "received.dcm"
        path.write_bytes(data)
        return read_header_checked(path)

    return check


def _with_sequence(implicit: bool) -> Dataset:
    ds = factories.radiograph(rows=32, columns=32)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "399348003", "SCT", "PA"
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "1", "99X", "x"
    item.ModifierCodeSequence = Sequence([nested])
    ds.ViewCodeSequence = Sequence([item])
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_complete_datasets_pass(implicit: bool, _check: Callable[[bytes], Dataset]) -> None:
    _check(factories.encode(_with_sequence(implicit)))


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("cut", [1, 100, 2000, 2100])
def test_truncated_datasets_fail(
    implicit: bool, cut: int, _check: Callable[[bytes], Dataset]
) -> None:
    data = factories.encode(_with_sequence(implicit))
    with pytest.raises(MalformedDatasetError):
        _check(data[:-cut])


def test_undefined_length_sequence_needs_its_delimiter(_check: Callable[[bytes], Dataset]) -> None:
    ds = _with_sequence(False)
    ds["ViewCodeSequence"].is_undefined_length = True
    data = factories.encode(ds)
    _check(data)
    # Cut the data just after the sequence's items start: no delimiter, and the pixel data gone.
    idx = data.index(b"\x54\x00\x20\x02")  # (0054,0220) ViewCodeSequence
    with pytest.raises(MalformedDatasetError):
        _check(data[: idx + 40])


def test_real_jpeg_file_complete_and_truncated(_check: Callable[[bytes], Dataset]) -> None:
    data = shared_file("cr_pa_chest_jpeg_baseline.dcm").read_bytes()
    _check(data)
    for cut in (1, 10, 5000):
        with pytest.raises(MalformedDatasetError):
            _check(data[:-cut])


def test_real_implicit_file(_check: Callable[[bytes], Dataset]) -> None:
    data = shared_file("dx_chest_no_view_tags.dcm").read_bytes()
    _check(data)
    with pytest.raises(MalformedDatasetError):
        _check(data[:-3])


def test_not_dicom_is_malformed(_check: Callable[[bytes], Dataset]) -> None:
    with pytest.raises(MalformedDatasetError):
        _check(b"\x00" * 128 + b"DICM" + b"garbage")


def test_header_is_returned(_check: Callable[[bytes], Dataset]) -> None:
    ds = _check(factories.encode(factories.radiograph(ViewPosition="PA")))
    assert ds.ViewPosition == "PA"
    assert "PixelData" not in ds


def test_short_native_pixel_data_is_malformed(_check: Callable[[bytes], Dataset]) -> None:
    ds = factories.radiograph(rows=64, columns=64, bits=16)
    ds.PixelData = ds.PixelData[:-512]  # well-formed encoding, too few pixels
    with pytest.raises(MalformedDatasetError, match="image attributes need 8192"):
        _check(factories.encode(ds))


def _nested(depth: int) -> Dataset:
    """A radiograph whose private sequence nests ``depth`` items deep, undefined lengths."""
    ds = factories.radiograph(rows=16, columns=16)
    inner: Dataset = ds
    for _ in range(depth):
        item = Dataset()
        item.is_undefined_length_sequence_item = True
        inner.add_new(0x00291010, "SQ", Sequence([item]))
        inner[0x00291010].is_undefined_length = True
        inner = item
    return ds


def test_nesting_is_refused_before_pydicom_recurses(_check: Callable[[bytes], Dataset]) -> None:
    from dicom_node.integrity import MAX_NESTING

    _check(factories.encode(_nested(MAX_NESTING)))
    with pytest.raises(MalformedDatasetError, match=f"nested more than {MAX_NESTING} deep"):
        _check(factories.encode(_nested(MAX_NESTING + 1)))
