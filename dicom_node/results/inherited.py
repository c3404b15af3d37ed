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


def repair_inherited(ds: Dataset) -> Dataset:
    """Fix or drop inherited values that violate their VR; log each change. Returns ``ds``."""
    age = ds.get("PatientAge")
    if age not in (None, "") and not re.fullmatch(r"\d{3}[DWMY]", str(age)):
        if re.fullmatch(r"\d{1,3}", str(age)):
            ds.PatientAge = f"{int(str(age)):03d}Y"  # a bare number of years
        else:
            ds.PatientAge = ""
        logger.info("repaired inherited PatientAge %r -> %r", age, ds.PatientAge)
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
