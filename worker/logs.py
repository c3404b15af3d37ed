"""Logging set-up for the entry points: plain text or JSON lines with a study correlation id.

Library code only calls ``logging.getLogger(__name__)``; handlers are installed here, by the
command line. A study's Study Instance UID travels with its log records as ``study`` — set with
:func:`study_context` in the worker, passed as ``extra={"study": ...}`` by the listener — so one
grep or one log query follows a study across processes. Patient names are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

_study: ContextVar[str | None] = ContextVar("cxr_study", default=None)


@contextmanager
def study_context(study_uid: str) -> Iterator[None]:
    """Attach ``study_uid`` to every log record emitted inside the block (this thread/task)."""
    token = _study.set(study_uid)
    try:
        yield
    finally:
        _study.reset(token)


class StudyFilter(logging.Filter):
    """Adds ``record.study`` from the context when the call did not pass one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "study", None) is None:
            record.study = _study.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, study, process, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "study": getattr(record, "study", None),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Install one stderr handler on the root logger (entry points only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(StudyFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO; keep its chatter for DEBUG. Its state machine and
    # decoders log a traceback for every malformed PDU a peer sends; the listener says the same
    # in one line, so a hostile peer cannot fill the disk with them.
    if root.level > logging.DEBUG:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        for name in ("fsm", "dul", "dimse", "utils", "events"):
            logging.getLogger(f"pynetdicom.{name}").setLevel(logging.CRITICAL)
