"""Deterministic UIDs and on-disk storage for the objects we produce."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pydicom.dataset import Dataset

_NAMESPACE = uuid.UUID("6f1c3f57-1d6c-4f1e-9a57-3c0d1f5e2b11")


def derived_uid(root: str, *parts: object) -> str:
    """A UID under ``root`` that is the same every time for the same ``parts``.

    Re-processing a study revision (a retry, a redelivered task) rebuilds its SC and SR with the
    same UIDs, so a PACS that already has them updates them instead of adding duplicates.
    """
    digits = str(uuid.uuid5(_NAMESPACE, "/".join(map(str, parts))).int)
    room = 64 - len(root)
    return root + digits[:room].lstrip("0")


def write_object(ds: Dataset, outputs: Path, study_uid: str) -> str:
    """Write ``ds`` atomically under ``outputs``; return its path relative to ``outputs``."""
    relative = f"{study_uid}/{ds.SOPInstanceUID}.dcm"
    target = outputs / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return relative
