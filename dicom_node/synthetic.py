"""Synthetic DICOM instances for demos, benchmarks and tests (no patient data).

The images are smooth random fields, not anatomy: they exercise every code path that reads
headers and pixels, and nothing that needs a real radiograph.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComprehensiveSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
# Synthetic objects use pydicom's example root, never ours: they must not look like our output.
_ROOT = "1.2.826.0.1.3680043.8.498."


def _meta(ds: Dataset, transfer_syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta


def _patient_study(ds: Dataset, study_uid: str | None, patient_id: str) -> None:
    now = datetime.now()
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid(_ROOT)
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = "SYN" + ds.StudyInstanceUID[-8:]
    ds.ReferringPhysicianName = ""
    ds.SpecificCharacterSet = "ISO_IR 100"


def _pixels(rows: int, columns: int, bits: int, seed: int) -> np.ndarray:
    """A PA chest phantom: torso, two dark lung fields, mediastinum, spine, ribs, texture.

    Plausible enough for the lung model's image check, so synthetic studies go through the
    whole pipeline; the seed varies the anatomy slightly and the texture.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y, x = y / rows, x / columns  # 0..1 down and across
    jitter = rng.uniform(-0.02, 0.02, 4)
    img = np.full((rows, columns), 0.08, np.float32)  # air around the patient
    torso = ((x - 0.5) / 0.46) ** 2 + ((y - 0.58) / 0.62) ** 2 < 1
    img[torso] = 0.62
    for side, cx in ((0, 0.31 + jitter[0]), (1, 0.69 + jitter[1])):
        lung = ((x - cx) / (0.15 + jitter[2])) ** 2 + ((y - 0.47) / (0.30 + jitter[3])) ** 2 < 1
        img[lung] = 0.22 + 0.06 * side
    heart = ((x - 0.54) / 0.13) ** 2 + ((y - 0.66) / 0.13) ** 2 < 1
    img[heart] = 0.58
    img[(np.abs(x - 0.5) < 0.035) & (y > 0.12)] = 0.75  # spine and mediastinum
    ribs = (np.sin((y * 9.0 + np.abs(x - 0.5) * 2.5) * np.pi) > 0.85) & torso
    img[ribs] += 0.08
    coarse = rng.random((max(2, rows // 32), max(2, columns // 32))).astype(np.float32)
    texture = np.kron(coarse, np.ones((32, 32), np.float32))[:rows, :columns]
    texture = np.pad(
        texture, ((0, rows - texture.shape[0]), (0, columns - texture.shape[1])), mode="edge"
    )
    img = np.clip(img + 0.05 * (texture - 0.5), 0.0, 1.0)
    top = (1 << bits) - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    return (img * top).astype(dtype)


def radiograph(
    *,
    modality: str = "DX",
    view_position: str | None = "PA",
    body_part: str | None = "CHEST",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    rows: int = 256,
    columns: int = 256,
    bits: int = 12,
    photometric: str = "MONOCHROME2",
    patient_id: str = "SYN0001",
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    **attributes: Any,
) -> Dataset:
    """A CR or DX radiograph with native pixel data.

    Parameters
    ----------
    modality : str
        ``"CR"`` or ``"DX"`` (sets the matching SOP class); others keep the DX SOP class.
    view_position, body_part : str or None
        ViewPosition and BodyPartExamined; None leaves the attribute out.
    rows, columns, bits : int
        Image size and BitsStored (8 or up to 16).
    **attributes
        Any further keyword attributes to set, e.g. ``SeriesDescription="CHEST PA"``.
    """
    ds = Dataset()
    ds.SOPClassUID = (
        CR_IMAGE_STORAGE if modality == "CR" else DigitalXRayImageStorageForPresentation
    )
    ds.SOPInstanceUID = sop_uid or generate_uid(_ROOT)
    _patient_study(ds, study_uid, patient_id)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid(_ROOT)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Synthetic"
    ds.PatientOrientation = ["L", "F"] if view_position == "PA" else ""
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.DetectorType = "DIRECT"
        ds.BurnedInAnnotation = "NO"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = Sequence([])
        ds.AcquisitionDate, ds.AcquisitionTime = ds.StudyDate, ds.StudyTime
        ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator = "43799004", "SCT"
        region.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence = Sequence([region] if body_part == "CHEST" else [])
    ds.LossyImageCompression = "00"
    if view_position is not None:
        ds.ViewPosition = view_position
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.139, 0.139]
    ds.ImagerPixelSpacing = [0.139, 0.139]
    ds.WindowCenter = (1 << bits) // 2
    ds.WindowWidth = 1 << bits
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = _pixels(rows, columns, bits, seed).tobytes()
    _meta(ds, transfer_syntax)
    return ds


def ct_slice(*, study_uid: str | None = None, rows: int = 64, columns: int = 64) -> Dataset:
    """A small CT image of the chest (not a radiograph)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid(_ROOT)
    _patient_study(ds, study_uid, "SYN0002")
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesInstanceUID = generate_uid(_ROOT)
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = _pixels(rows, columns, 12, 1).tobytes()
    _meta(ds, ExplicitVRLittleEndian)
    return ds


def structured_report(*, study_uid: str | None = None) -> Dataset:
    """A minimal Comprehensive SR document (a non-image object)."""
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = generate_uid(_ROOT)
    _patient_study(ds, study_uid, "SYN0003")
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid(_ROOT)
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.ContentSequence = Sequence([])
    _meta(ds, ImplicitVRLittleEndian)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def from_picture(
    picture: Path, tag: str, header: Dataset | None = None, **attributes: Any
) -> Dataset:
    """A PA chest radiograph holding ``picture``'s pixels (8-bit grey): real anatomy from a
    labelled PNG/JPEG collection, under ``header``'s patient and study attributes (a synthetic
    DX header when None), with new UIDs derived from ``tag`` (the same tag, the same UIDs)."""
    from PIL import Image
    from pydicom.uid import generate_uid

    if header is not None:
        ds = header.copy()
        ds.file_meta = FileMetaDataset(header.file_meta)
    else:
        ds = radiograph(**attributes)
    with Image.open(picture) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.uint8)
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
