"""Alembic migrations on real PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from worker.db.engine import make_engine
from worker.db.migrate import current_revision, downgrade, ensure_schema, head_revision, upgrade
from worker.db.models import Base

TABLES = {"associations", "studies", "study_events", "instances", "rejections"}


def test_upgrade_head_then_downgrade_base(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert not (TABLES & set(inspect(engine).get_table_names()))
    upgrade(engine)  # and back up again
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_models_match_migrations(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], "models and migrations differ: add a migration"


def test_ensure_schema_refuses_an_old_database_without_auto_migrate(db_url: str) -> None:
    import pytest

    from worker.db.migrate import SchemaOutOfDateError

    engine = make_engine(db_url)
    with pytest.raises(SchemaOutOfDateError, match="cxr-triage db upgrade"):
        ensure_schema(engine, auto_migrate=False)
    ensure_schema(engine, auto_migrate=True)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_alembic_without_a_url_migrates_the_configured_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alembic upgrade`` run by hand (no URL from ``cxr-triage db``) reads the settings."""
    from alembic import command

    from worker.db.migrate import alembic_config
    from worker.settings import get_settings

    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        command.upgrade(alembic_config(), "head")
    finally:
        get_settings.cache_clear()
    engine = make_engine(f"sqlite:///{tmp_path / 'cxr-triage.sqlite'}")
    assert current_revision(engine) == head_revision()
    engine.dispose()
