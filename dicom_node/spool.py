"""Durable spool of received instances.

Layout: ``<root>/incoming/`` holds files being received (same file system, so finishing a file is a
rename), ``<root>/studies/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` holds kept instances. A file
appears under ``studies/`` only complete and fsync'd: :meth:`Spool.commit` fsyncs the file, renames
it into place and fsyncs the directory, so a crash leaves either the whole file or none.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dicom_node.uids import validate_uid

logger = logging.getLogger(__name__)


class LowDiskSpaceError(OSError):
    """Free space in the spool is below the configured watermark."""


@dataclass(frozen=True)
class SpoolLocation:
    """Where an instance lives in the spool, relative and absolute."""

    relative: str
    path: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable file store for received instances.

    Parameters
    ----------
    root : pathlib.Path
        Spool directory; created if missing.
    min_free_bytes : int
        Watermark: below this much free space new data is refused.
    fsync : bool
        Flush files and directories to stable storage before acknowledging. Only benchmarks
        comparing against tools that do not fsync should turn this off.
    """

    def __init__(self, root: Path, *, min_free_bytes: int = 0, fsync: bool = True) -> None:
        self.root = Path(root)
        self.min_free_bytes = int(min_free_bytes)
        self.fsync = fsync
        self.incoming = self.root / "incoming"
        self.studies = self.root / "studies"
        for d in (self.root, self.incoming, self.studies):
            d.mkdir(parents=True, exist_ok=True)
        self._studies_real = self.studies.resolve()

    def free_bytes(self) -> int:
        """Free space available to this process on the spool's file system."""
        return shutil.disk_usage(self.root).free

    def check_space(self, needed: int = 0) -> None:
        """Raise :class:`LowDiskSpaceError` if ``needed`` more bytes would cross the watermark."""
        free = self.free_bytes()
        if free - needed < self.min_free_bytes:
            raise LowDiskSpaceError(
                f"spool {self.root} has {free // 2**20} MiB free, needs {needed // 2**20} MiB "
                f"above the {self.min_free_bytes // 2**20} MiB watermark"
            )

    def location(self, study_uid: str, series_uid: str, sop_uid: str) -> SpoolLocation:
        """Return the spool location for an instance, validating every UID first.

        Raises
        ------
        dicom_node.uids.InvalidUIDError
            If a UID could take the path outside the spool.
        """
        parts = (
            validate_uid(study_uid, "StudyInstanceUID"),
            validate_uid(series_uid, "SeriesInstanceUID"),
            validate_uid(sop_uid, "SOPInstanceUID") + ".dcm",
        )
        relative = "/".join(parts)
        path = Path(os.path.normpath(self._studies_real / relative))
        # Belt and braces: validate_uid already forbids separators and "..". Normalised as
        # text: resolving every component on disk cost more than the rest of the lookup.
        if path.parent.parent.parent != self._studies_real:
            raise ValueError(f"spool path {path} escapes {self.studies}")
        return SpoolLocation(relative=relative, path=path)

    def commit(self, source: Path, location: SpoolLocation) -> int:
        """Move a fully received file into place durably; return its size in bytes.

        ``source`` must be on the spool's file system (``incoming/``) so that the move is an
        atomic rename. An existing file for the same instance is replaced atomically.
        """
        size = source.stat().st_size
        self.check_space(0)
        target = location.path
        self._makedirs(target.parent)
        if self.fsync:
            with open(source, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(source, target)
        if self.fsync:
            _fsync_dir(target.parent)
        return size

    def _makedirs(self, directory: Path) -> None:
        # A new directory entry is only durable once its parent directory is fsync'd too.
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for d in reversed(missing):
            d.mkdir(exist_ok=True)
            if self.fsync:
                _fsync_dir(d.parent)

    def remove(self, location: SpoolLocation) -> None:
        """Delete a committed file (used when its database row could not be written)."""
        try:
            location.path.unlink()
        except FileNotFoundError:
            return
        if self.fsync:
            _fsync_dir(location.path.parent)

    def path_of(self, relative: str) -> Path:
        """Absolute path of a file stored under ``relative`` (as recorded in the database)."""
        return self.studies / relative
