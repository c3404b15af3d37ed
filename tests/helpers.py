"""Small helpers for tests that talk to a running node."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


def cli_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a ``cxr-triage`` child process: this one's, without any CXR_ setting
    of the developer's, a data dir of its own, no free-space margin and no metrics port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(CXR_DATA_DIR=str(data_dir), CXR_MIN_FREE_MB="0", CXR_METRICS_PORT="0")
    env.update(settings)
    return env


@contextmanager
def in_process_worker(app: Any, queue: str, shutdown_timeout: float = 30) -> Iterator[Any]:
    """A real Celery worker (solo pool) in this process, consuming ``queue`` in the block."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=shutdown_timeout,
        queues=[queue],
    ) as worker:
        yield worker


@contextmanager
def pipeline_worker(settings: Any) -> Iterator[Any]:
    """The product's tasks (``worker.tasks``) run by an in-process worker with ``settings``."""
    from worker.celery_app import create_celery
    from worker.tasks import register_tasks

    app = create_celery(settings)
    register_tasks(app, settings)
    with in_process_worker(app, settings.queue.inference_queue) as worker:
        yield worker


def our_sr_file(tmp_path: Path, **patient: Any) -> Path:
    """One of our SRs (a flagged COVID-19 result of tests.test_result_objects) for a synthetic
    source with ``patient``'s attributes, written to ``tmp_path / "sr.dcm"``."""
    import warnings

    from tests import factories
    from tests.test_result_objects import _sc, _sr

    src = factories.radiograph(rows=300, columns=240, bits=12, **patient)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # single-component patient names
        sr = _sr(src, _sc(src))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path
