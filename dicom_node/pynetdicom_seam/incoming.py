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
        with contextlib.suppress(OSError):  # its buffered bytes may not fit either
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


def _handle_of(message: Any) -> Any:
    """The open dataset file of a DIMSE message (being received) or primitive (complete)."""
    return getattr(message, "_data_set_file", None) or getattr(message, "_dataset_file", None)


def receiving_into(dul: Any) -> Any | None:
    """The file the DUL's message being received writes its dataset into (None: none, or one
    already dropped by :func:`stop_receiving`)."""
    message = getattr(dul.assoc.dimse, "message", None)
    target = getattr(message, "_data_set_file", None)
    return None if isinstance(target, PartialDataset) else target


def stop_receiving(dul: Any, reason: str) -> None:
    """Drop the rest of the dataset being received (its file is emptied); the C-STORE is then
    answered with :func:`dropped_reason`'s reason instead of the association being aborted."""
    message = dul.assoc.dimse.message
    message._data_set_file = PartialDataset.discard(message._data_set_file, reason)


def dropped_reason(request: Any) -> str | None:
    """Why a C-STORE request's dataset was dropped while it arrived; None if it was not."""
    handle = getattr(request, "_dataset_file", None)
    return handle.reason if isinstance(handle, PartialDataset) else None


def has_dataset(request: Any) -> bool:
    """False when the C-STORE command said no dataset follows (CommandDataSetType 0x0101)."""
    return getattr(request, "_dataset_path", None) is not None


def request_file(request: Any) -> Path | None:
    """The incoming/ file a complete C-STORE request's dataset was written to."""
    return _file_of(request)


def _file_of(message: Any) -> Path | None:
    handle = _handle_of(message)
    return None if handle is None else Path(handle.name)


def watch_datasets(assoc: Any) -> set[Path]:
    """Note every incoming/ file this association's DIMSE layer opens; return the live set.

    A file is opened when a C-STORE command has been decoded. It is handed to our handler, or it
    is not: the association ends mid-dataset, or pynetdicom refuses the request before calling
    the handler (a command with a bad value). The set lets the owner remove what is left.
    """
    dimse = assoc.dimse
    files: set[Path] = set()
    receive, get_msg = dimse.receive_primitive, dimse.get_msg

    def receive_primitive(primitive: Any) -> None:
        receive(primitive)  # runs in the DUL thread
        path = _file_of(dimse.message)
        if path is not None:
            files.add(path)

    def get_message(block: bool = False) -> Any:
        context_id, msg = get_msg(block=block)  # runs in the association thread
        path = _file_of(msg)
        if path is not None:
            files.add(path)
        return context_id, msg

    dimse.receive_primitive = receive_primitive
    dimse.get_msg = get_message
    return files


def discard_partial_datasets(assoc: Any, files: set[Path], incoming: Path) -> list[Path]:
    """Remove the incoming/ files an ended association opened and no handler took.

    ``files`` is what :func:`watch_datasets` collected; the message being received when the
    association ended and any request still queued are added. Only those files are touched
    (normally in ``incoming``; elsewhere when another node in the process set the temporary
    directory). Returns the paths removed.
    """
    dimse = getattr(assoc, "dimse", None)
    messages = [getattr(dimse, "message", None)]  # its file is open: close it before removing
    while dimse is not None:
        try:
            _context, primitive = dimse.msg_queue.get_nowait()
        except queue.Empty:
            break
        messages.append(primitive)  # complete requests nobody served
    for message in messages:
        handle = _handle_of(message)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
            files.add(Path(handle.name))
    removed = []
    for path in files:
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # committed to the spool, or removed by pynetdicom after our handler
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
