"""pynetdicom's process-wide switches for moving datasets as files, set at entry points only.

- Received C-STORE datasets are written straight to a file in the spool's ``incoming/``
  (``STORE_RECV_CHUNKED_DATASET`` plus ``tempfile.tempdir``, which pynetdicom's temporary files
  use), so keeping one is an fsync and a rename, never a decode and rewrite.
- Files are sent as they are on disk (``STORE_SEND_CHUNKED_DATASET``), so what arrives is exactly
  what the file holds.

Both are global to the process: library code never sets them; ``cxr-triage`` does in ``main``
(sending) and ``listen`` (receiving), and tests set them per test and undo them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from pynetdicom import _config


def configure(incoming: Path | None = None) -> Callable[[], None]:
    """Send files as they are; with ``incoming``, also receive datasets into it.

    Returns a function that restores the previous values.
    """
    saved = (
        _config.STORE_SEND_CHUNKED_DATASET,
        _config.STORE_RECV_CHUNKED_DATASET,
        tempfile.tempdir,
    )
    _config.STORE_SEND_CHUNKED_DATASET = True
    if incoming is not None:
        incoming.mkdir(parents=True, exist_ok=True)
        _config.STORE_RECV_CHUNKED_DATASET = True
        tempfile.tempdir = str(incoming)

    def undo() -> None:
        send, recv, tempdir = saved
        _config.STORE_SEND_CHUNKED_DATASET = send
        _config.STORE_RECV_CHUNKED_DATASET = recv
        tempfile.tempdir = tempdir

    return undo


def receiving_to_files() -> bool:
    """True once an entry point has switched receiving to files."""
    return bool(_config.STORE_RECV_CHUNKED_DATASET)
