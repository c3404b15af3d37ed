"""Small helpers for tests that talk to a running node."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from dicom_node.addresses import Destination
from dicom_node.sender import SenderOptions, SendSummary, send_datasets, send_files

T = TypeVar("T")


def dest(node: Any, ae: str = "CXR_TRIAGE") -> Destination:
    return Destination(ae, "127.0.0.1", node.listener.port)


def send(
    node: Any,
    items: Iterable[Dataset | Path],
    *,
    calling_ae: str = "TEST_SCU",
    called_ae: str = "CXR_TRIAGE",
) -> SendSummary:
    items = list(items)
    options = SenderOptions(calling_ae=calling_ae, dimse_timeout=30, acse_timeout=10)
    target = dest(node, called_ae)
    if items and isinstance(items[0], Path):
        return send_files(items, target, options)  # type: ignore[arg-type]
    return send_datasets(items, target, options)  # type: ignore[arg-type]


def rows(engine: Engine, model: type[T], *where: Any) -> list[T]:
    with Session(engine) as s:
        return list(s.scalars(select(model).where(*where)).all())


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
