"""Grad-CAM overlay as a Secondary Capture image in the source study."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

from dicom_node.eligibility import OUR_MANUFACTURER
from dicom_node.results.algorithm import Algorithm
from dicom_node.results.inherited import repair_inherited

SERIES_DESCRIPTION = "cxr-triage Grad-CAM - NOT FOR DIAGNOSTIC USE"
# Attributes from_ref_dataset leaves out that viewers and dciodvfy expect on the SC.
_COPIED = (
    "BodyPartExamined",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "PatientSex",
    "PatientBirthDate",
    "PatientAge",
)


def burn_in_text(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """Write ``lines`` in the top-left corner on a dark band, scaled to the image size."""
    img = Image.fromarray(rgb)
    size = max(12, img.height // 40)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    pad = size // 2
    widths = [draw.textbbox((0, 0), line, font=font)[2] for line in lines]
    height = len(lines) * int(size * 1.3) + 2 * pad
    draw.rectangle([0, 0, max(widths) + 2 * pad, height], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * int(size * 1.3)), line, fill=(255, 255, 0), font=font)
    return np.asarray(img)


def build_gradcam_sc(
    source: Dataset,
    overlay_rgb: np.ndarray,
    *,
    label: str,
    probability: float,
    algorithm: Algorithm,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    series_number: int = 9901,
) -> hd.sc.SCImage:
    """Build the SC for one source image.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The source radiograph (header is enough); patient, study and references come from it.
    overlay_rgb : numpy.ndarray
        ``(rows // f, columns // f, 3)`` uint8 overlay in the source image's geometry, for an
        integer factor ``f`` >= 1 (a smaller SC is much faster to build, send and show).
    label, probability : str, float
        The finding shown in the burned-in text.
    algorithm : Algorithm
        The model that made the heatmap (burned in and in ManufacturerModelName).

    Raises
    ------
    ValueError
        If the overlay is not an RGB uint8 image of the source's rows and columns.
    """
    if overlay_rgb.dtype != np.uint8 or overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3:
        raise ValueError("overlay_rgb must be a (rows, columns, 3) uint8 array")
    rows, cols = int(source.Rows), int(source.Columns)
    factor = max(1, rows // max(1, overlay_rgb.shape[0]))
    if overlay_rgb.shape[:2] != (rows // factor, cols // factor):
        raise ValueError(
            f"overlay is {overlay_rgb.shape[:2]}, the source image is {(rows, cols)}: "
            "Rows/Columns must match, or both be divided by the same integer"
        )
    pixels = burn_in_text(
        overlay_rgb,
        [
            f"{label}  p={probability:.2f}",
            str(algorithm),
            "NOT FOR DIAGNOSTIC USE",
        ],
    )
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.YBR_FULL_422,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=OUR_MANUFACTURER,
        patient_orientation=tuple(source.get("PatientOrientation") or ("L", "F")),
        transfer_syntax_uid=JPEGBaseline8Bit,
    )
    for keyword in _COPIED:
        if keyword in source and keyword not in sc:
            setattr(sc, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]
    repair_inherited(sc)
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.ManufacturerModelName = algorithm.name
    sc.SoftwareVersions = algorithm.version
    sc.DerivationDescription = f"Grad-CAM heatmap of {label} by {OUR_MANUFACTURER} {algorithm.name}"
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc
