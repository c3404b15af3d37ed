"""Files in the spool's ``incoming/`` directory that no C-STORE will ever finish.

pynetdicom writes each C-STORE dataset into ``incoming/`` as its P-DATA arrive and deletes the file
after our handler ran. When the association ends before that (an A-ABORT, a dropped connection, a
command it could not turn into a request) the file stays: these helpers find and remove it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class PartialDataset:
    """Stands in for pynetdicom's dataset file once we stopped writing a dataset to disk.

    The rest of the dataset is read from the network and dropped, and the file is emptied, so
    the C-STORE can still be answered (``0xA700``) instead of aborting the association.
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        self.file = self  # pynetdicom calls ``_data_set_file.file.flush()``

    @classmethod
    def discard(cls, target: Any, reason: str) -> PartialDataset:
        target.close()
        with open(target.name, "r+b") as fh:
            fh.truncate(0)
        return cls(target.name, reason)

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def _paths_of(message: Any) -> Iterator[Path]:
    handle = getattr(message, "_data_set_file", None) or getattr(message, "_dataset_file", None)
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
        yield Path(handle.name)


def discard_partial_datasets(assoc: Any, incoming: Path) -> list[Path]:
    """Remove the files of C-STOREs this (ended) association never handed to the handler.

    That is the message being received when it ended and any complete request still queued.
    Only files inside ``incoming`` are touched. Returns the paths removed.
    """
    dimse = getattr(assoc, "dimse", None)
    if dimse is None:
        return []
    messages = [getattr(dimse, "message", None)]
    while True:
        try:
            _context, primitive = dimse.msg_queue.get_nowait()
        except queue.Empty:
            break
        messages.append(primitive)
    removed = []
    root = incoming.resolve()
    for message in messages:
        for path in _paths_of(message):
            if path.resolve().parent != root:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    return removed


def sweep_stale(incoming: Path, *, older_than: float) -> list[Path]:
    """Remove files in ``incoming`` not modified for ``older_than`` seconds; return them."""
    cutoff = time.time() - older_than
    removed = []
    with os.scandir(incoming) as entries:
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                continue
    return removed
