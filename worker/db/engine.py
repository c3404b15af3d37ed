"""Engine and session factory for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from worker.settings import Settings


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the listener write while auditors read; FULL makes each commit durable, which the
    # listener relies on before it acknowledges an instance.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str, *, timeout: float = 30.0) -> Engine:
    """Create an engine with the settings this application needs on each backend.

    Statement parameters never appear in exceptions or logs: they hold patient data.
    ``timeout`` bounds how long a write waits: SQLite's busy timeout, PostgreSQL's connect
    timeout. A write that cannot finish in time fails, and the listener answers 0xA700.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": timeout}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        # Errors and logs must not carry patient IDs and accession numbers.
        hide_parameters=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=timeout,
        connect_args={"connect_timeout": max(1, int(timeout))},
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class DatabaseNotFoundError(RuntimeError):
    """A read-only command was pointed at a database that does not exist."""


def open_database(settings: Settings, *, read_only: bool = False, create: bool = True) -> Engine:
    """Create the engine and make sure the schema is current (auto-upgrade on SQLite).

    The one way every command opens the database: the listener, the worker, audit, api, replay.
    ``read_only`` commands (audit, the API) never create or migrate one, and commands that only
    act on what is recorded (replay: ``create=False``) never create one: pointed at the wrong
    place they say so instead of reporting an empty database.
    """
    from sqlalchemy.engine import make_url

    from worker.db.migrate import ensure_schema

    url = settings.storage.effective_database_url
    if read_only or not create:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
            raise DatabaseNotFoundError(
                f"no database at {parsed.database}: point --data-dir or CXR_DATA_DIR (or "
                "CXR_DATABASE_URL) at "
                "the node's"
            )
    else:
        settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, timeout=settings.storage.db_timeout)
    ensure_schema(engine, auto_migrate=settings.storage.should_auto_migrate and not read_only)
    return engine
