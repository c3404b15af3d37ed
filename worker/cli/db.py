"""``cxr-triage db``: database migrations."""

from __future__ import annotations

import argparse

from sqlalchemy import Engine

from worker.db.engine import make_engine
from worker.db.migrate import current_revision, downgrade, head_revision, upgrade
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "db",
        help="create or upgrade the database schema",
        description="Alembic migrations for the database in CXR_DATABASE_URL.",
    )
    dbsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dbsub.add_parser(
        "upgrade",
        help="upgrade to the newest schema (or --revision)",
        description=(
            "Apply Alembic migrations to the database in CXR_DATABASE_URL (SQLite in "
            "CXR_DATA_DIR by default). Safe to run repeatedly; run it after every upgrade of "
            "cxr-triage before starting the node on PostgreSQL."
        ),
    )
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(func=run_upgrade)
    down = dbsub.add_parser(
        "downgrade",
        help="downgrade to REVISION ('base' drops everything)",
        description="Undo migrations down to REVISION. 'base' drops every table: back up first.",
    )
    down.add_argument("revision", help="target revision, e.g. 0001 or base")
    down.set_defaults(func=run_downgrade)
    cur = dbsub.add_parser(
        "current",
        help="print the current and the newest revision",
        description="Print the schema revision of the database and the newest this version knows.",
    )
    cur.set_defaults(func=run_current)


def _engine(settings: Settings) -> Engine:
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.storage.effective_database_url)


def run_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    engine = _engine(settings)
    upgrade(engine, args.revision)
    print(f"database at {current_revision(engine)} ({engine.url.render_as_string(True)})")
    return 0


def run_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    engine = _engine(settings)
    downgrade(engine, args.revision)
    print(f"database at {current_revision(engine) or 'base'}")
    return 0


def run_current(args: argparse.Namespace, settings: Settings) -> int:
    engine = _engine(settings)
    print(f"current: {current_revision(engine) or 'none'}  head: {head_revision()}")
    return 0
