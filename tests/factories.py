"""The tests' own DICOM factories (on top of :mod:`dicom_node.synthetic`)."""

from __future__ import annotations

import io
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

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
            ds.file_meta.MediaStorageSOPInstanceUID = UID(value)
    finally:
        config.settings.writing_validation_mode = old
    return ds


def chest_from_picture(picture: Path, header: Path, tag: str) -> Dataset:
    """A PA chest radiograph with ``picture``'s pixels under ``header``'s patient and study
    attributes (see :func:`dicom_node.synthetic.from_picture`)."""
    import pydicom

    return synthetic.from_picture(picture, tag, pydicom.dcmread(header))
