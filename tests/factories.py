"""The tests' own DICOM factories (on top of :mod:`dicom_node.synthetic`)."""

from __future__ import annotations

import io
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node import synthetic

radiograph = synthetic.radiograph
ct_slice = synthetic.ct_slice
structured_report = synthetic.structured_report
write = synthetic.write


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def truncated_file(ds: Dataset, path: Path, cut: int) -> Path:
    """Write ``ds`` with its last ``cut`` bytes missing."""
    data = encode(ds)
    path.write_bytes(data[:-cut])
    return path


def with_unsafe_uid(ds: Dataset, keyword: str, value: str) -> Dataset:
    """Put a value that is not a UID (e.g. a path) into a UID attribute, bypassing validation."""
    from pydicom import config

    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.WARN
    try:
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    finally:
        config.settings.writing_validation_mode = old
    return ds


def chest_from_picture(picture: Path, header: Path, tag: str) -> Dataset:
    """A PA chest radiograph with ``picture``'s pixels (8-bit grey) under ``header``'s patient
    and study attributes, with new UIDs derived from ``tag``: real anatomy the model classifies,
    from the labelled PNG/JPEG collection."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.dcmread(header)
    pixels = np.asarray(Image.open(picture).convert("L"), dtype=np.uint8)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[tag, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, "series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, "instance"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"):
        ds.pop(keyword, None)
    ds.PixelData = pixels.tobytes()
    return ds
