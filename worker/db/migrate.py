"""Run Alembic migrations from code (``cxr-triage db``, start-up on SQLite, tests)."""

from __future__ import annotations

from pathlib import Path

import cxr_triage_migrations as migrations
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision``."""
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database behind ``engine`` to ``revision`` (``base`` empties it)."""
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class SchemaOutOfDateError(RuntimeError):
    """The database is not at the migration head this code expects."""


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> None:
    """Upgrade automatically, or raise a clear error, when the schema is behind."""
    current, head = current_revision(engine), head_revision()
    if current == head:
        return
    if auto_migrate:
        upgrade(engine)
        return
    raise SchemaOutOfDateError(
        f"database schema is at {current or 'nothing'}, this version needs {head}: "
        "run `cxr-triage db upgrade`"
    )
