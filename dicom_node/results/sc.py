"""Grad-CAM overlay as a Secondary Capture image in the source study."""

from __future__ import annotations

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

from dicom_node.eligibility import OUR_MANUFACTURER
from dicom_node.results import wording
from dicom_node.results.algorithm import Algorithm
from dicom_node.results.inherited import complete_series, repair_inherited, source_age, with_type2
from dicom_node.results.triage import NOT_FLAGGED, Triage

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


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def label_strip(rgb: np.ndarray, lines: list[str], ramp: np.ndarray | None) -> np.ndarray:
    """``rgb`` with a black strip below it holding ``lines`` and, when given, the colour scale
    ("low [colours] high") on a row of its own.

    Below the image, not on it: viewers draw their own overlay text in the corners, and a label
    on the lungs would hide what the heatmap shows. The text is as large as the width allows.
    """
    rows, cols = rgb.shape[:2]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(8, cols // 40)
    while size > 8:
        font = _font(size)
        widest = max(probe.textbbox((0, 0), line, font=font)[2] for line in lines)
        if widest + size <= cols:
            break
        size -= 1
    font = _font(size)
    pad = max(2, size // 2)
    line_height = int(size * 1.3)
    count = len(lines) + (ramp is not None)
    height = count * line_height + 2 * pad
    height += height % 2  # JPEG 4:2:2 likes even sizes
    img = Image.new("RGB", (cols, rows + height), (0, 0, 0))
    img.paste(Image.fromarray(rgb), (0, 0))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((pad, rows + pad + i * line_height), line, fill=(255, 255, 0), font=font)
    if ramp is not None:
        top = rows + pad + len(lines) * line_height
        draw.text((pad, top), "low", fill=(255, 255, 255), font=font)
        left = pad + draw.textbbox((0, 0), "low ", font=font)[2]
        width = max(8, min(cols // 3, cols - left - 4 * size))
        bar = Image.fromarray(ramp).resize((width, max(4, size * 2 // 3)))
        img.paste(bar, (left, top + size // 4))
        draw.text((left + width + pad, top), "high", fill=(255, 255, 255), font=font)
    return np.asarray(img)


def labelled_picture(
    overlay_rgb: np.ndarray,
    triage: Triage,
    heatmap_label: str | None,
    algorithm: Algorithm,
    colour_ramp: np.ndarray | None,
) -> np.ndarray:
    """The SC's picture: the overlay above the strip that says the result, what the colours
    mean and that it is not for diagnosis. ``predict --heatmap`` writes the same picture, so
    a PNG on a desk never says less than the SC in the PACS."""
    coloured = triage.band != NOT_FLAGGED and heatmap_label is not None
    return label_strip(
        overlay_rgb,
        [
            wording.headline(triage),
            *([warning] if (warning := wording.caution(triage)) else []),
            wording.heatmap_meaning(triage, heatmap_label if coloured else None),
            f"{algorithm}   NOT FOR DIAGNOSTIC USE",
        ],
        colour_ramp if coloured else None,
    )


def build_gradcam_sc(
    source: Dataset,
    overlay_rgb: np.ndarray,
    *,
    triage: Triage,
    heatmap_label: str | None,
    algorithm: Algorithm,
    colour_ramp: np.ndarray | None = None,
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
    triage : Triage
        The image's result, shown in the label strip below the image and in the series
        description (an SC speaks for its own image, so it stays right in a later revision).
    heatmap_label : str or None
        The class whose evidence the overlay's colours show (None: no colours).
    algorithm : Algorithm
        The model that made the heatmap (in the strip and in ManufacturerModelName).
    colour_ramp : numpy.ndarray, optional
        ``(1, n, 3)`` uint8 colours of the heatmap from low to high, drawn as its scale
        (left out when nothing is flagged or near a threshold: no colours then).

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
    coloured = triage.band != NOT_FLAGGED and heatmap_label is not None
    pixels = labelled_picture(overlay_rgb, triage, heatmap_label, algorithm, colour_ramp)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=with_type2(source),
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
        if keyword == "PatientAge":
            age = source_age(source)
            if age is not None and keyword not in sc:
                sc.PatientAge = age
        elif keyword in source and keyword not in sc:
            setattr(sc, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]
    repair_inherited(sc)
    complete_series(sc, source)
    # JPEG Baseline is lossy: say so, and by how much (PS3.3 C.7.6.1.1.5).
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionRatio = f"{pixels.nbytes / max(1, len(sc.PixelData)):.2f}"
    sc.LossyImageCompressionMethod = "ISO_10918_1"
    sc.SeriesDescription = wording.series_description(triage, "heatmap")
    sc.ManufacturerModelName = algorithm.name
    sc.SoftwareVersions = algorithm.version
    sc.DerivationDescription = (
        f"Grad-CAM heatmap of {heatmap_label} by {OUR_MANUFACTURER} {algorithm.name}"
        if coloured
        else f"Source image, no heatmap ({triage.band}), by {OUR_MANUFACTURER} {algorithm.name}"
    )
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc
