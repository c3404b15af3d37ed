"""Shared fixtures: settings in a temporary data dir, databases, a running node."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.services import RedisServer, StoreSCP, postgres_database


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom() -> Iterator[None]:
    # Invalid encodings written by our own code should fail tests, not pass with a warning.
    old = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = old


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CXR_") and key != "CXR_TEST_PG_URL":
            monkeypatch.delenv(key)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, migrated to head with Alembic."""
    from worker.db.engine import make_engine
    from worker.db.migrate import upgrade

    with postgres_database() as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def sessions(db_url: str) -> Iterator[Any]:
    """A session factory on a migrated database (SQLite and PostgreSQL, via ``db_url``)."""
    from worker.db.engine import make_engine, make_session_factory
    from worker.db.migrate import ensure_schema

    engine = make_engine(db_url)
    ensure_schema(engine, auto_migrate=True)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    """dcmtk's storescp as the PACS that receives the results."""
    scp = StoreSCP(tmp_path / "pacs")
    scp.start()
    yield scp
    scp.stop()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Any]:
    """Settings for a node in ``tmp_path`` on a free port, with overrides."""
    from worker.settings import Settings

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "port": 0,
            "min_free_mb": 0,
            "quiet_seconds": 0.5,
            "monitor_interval": 0.2,
            "metrics_port": 0,
            "worker_metrics_port": 0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def start_node(make_settings: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Start a real node (listener + monitor); stopped after the test."""
    from worker.node_service import build_node

    nodes = []

    from dicom_node.pynetdicom_seam import io_switches

    undo: list[Callable[[], None]] = []

    def start(**overrides: Any) -> Any:
        settings = make_settings(**overrides)
        undo.append(
            io_switches.configure(settings.storage.spool_dir / "incoming")
        )  # as `listen` does
        node = build_node(settings)
        node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()
    for restore in reversed(undo):
        restore()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the services their fixtures start, so ``-m "not postgres"`` and the like work.

    ``dcmtk`` and ``slow`` are marked where the tests are written.
    """
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "pg_url" in names or "postgres" in params.values():
            item.add_marker(pytest.mark.postgres)
        if "redis_server" in names:
            item.add_marker(pytest.mark.redis)
