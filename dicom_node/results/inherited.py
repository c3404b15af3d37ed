"""Repairs to values our objects inherit from the source image.

The results copy the patient and study modules from the source. Sources in the wild carry values
that break their VR (the SIIM-ACR CR has PatientAge ``62`` where AS needs ``062Y``); copied as is,
they would make our objects invalid (``dciodvfy`` errors) although we did not write them.
"""

from __future__ import annotations

import logging
import re

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

#: Patient and study attributes of Type 2 in the SR and SC: present, empty when unknown.
TYPE2_INHERITED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


_AGE = re.compile(r"\d{3}[DWMY]")


def _age_text(ds: Dataset) -> str:
    """PatientAge as written, read from the element's raw bytes where pydicom has not converted
    them yet: converting an invalid value makes pydicom warn about a value we are to drop."""
    raw = ds.get_item("PatientAge") if "PatientAge" in ds else None
    value = raw.value if raw is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip(" \0")


def _invalid_age(ds: Dataset) -> str | None:
    """The PatientAge that is not a valid AS (logged as left out), or None."""
    text = _age_text(ds)
    if text and not _AGE.fullmatch(text):
        logger.info("left out the source's invalid PatientAge %r", text)
        return text
    return None


def source_age(source: Dataset) -> str | None:
    """The source's PatientAge when it is a valid AS, else None (an invalid one is logged)."""
    return None if _invalid_age(source) else (_age_text(source) or None)


def repair_inherited(ds: Dataset) -> Dataset:
    """Drop inherited values that violate their VR, never inventing a new value; log each.
    Returns ``ds``.

    PatientAge is Type 3 in our objects: an invalid one (``62`` where AS needs ``062Y``) is left
    out rather than rewritten, so no object of ours states a value the source did not.
    """
    if _invalid_age(ds):
        del ds.PatientAge
    return ds


def complete_series(ds: Dataset, source: Dataset | None = None) -> Dataset:
    """The General Series attributes a viewer and a validator look for, on an object we made.

    SeriesDate/SeriesTime: when the series was made (its content date), so a PACS files it under
    a date, not "?". Laterality (Type 2C: required unless the body part is known to be unpaired):
    the source's when it has one, else present and empty ("unknown") when the body part is not
    a chest, whose lungs the SC shows both of.
    """
    if "ContentDate" in ds and "SeriesDate" not in ds:
        ds.SeriesDate = ds.ContentDate
        ds.SeriesTime = ds.get("ContentTime", "")
    if source is not None and "Laterality" not in ds:
        if source.get("Laterality"):
            ds.Laterality = source.Laterality
        elif str(ds.get("BodyPartExamined", "")).upper() != "CHEST":
            ds.Laterality = None
    return ds


def with_type2(source: Dataset) -> Dataset:
    """``source`` with every Type 2 patient/study attribute present (empty where it was absent).

    Anonymisers drop PatientBirthDate and the like; highdicom copies them from the source and
    fails on a missing one, which would cost the whole study its results.
    """
    missing = [k for k in TYPE2_INHERITED if k not in source]
    if not missing:
        return source
    out = Dataset()
    out.update(source)
    if hasattr(source, "file_meta"):
        out.file_meta = source.file_meta
    for keyword in missing:
        setattr(out, keyword, None)
    return out
