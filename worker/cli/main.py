"""``cxr-triage``: entry point, global options and logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from dicom_node import io_switches
from worker import __version__
from worker.cli import (
    api,
    audit,
    calibrate,
    crossval,
    db,
    demo,
    echo,
    evaluate,
    listen,
    predict,
    replay,
    run,
    send,
    train,
    train_lungs,
    validate,
    work,
)
from worker.db.engine import DatabaseNotFoundError
from worker.db.migrate import SchemaOutOfDateError
from worker.logs import configure_logging
from worker.settings import Settings, load_settings, unknown_environment_names

SUBCOMMANDS = (
    run,
    demo,
    listen,
    work,
    echo,
    send,
    replay,
    audit,
    api,
    db,
    train,
    train_lungs,
    crossval,
    evaluate,
    validate,
    calibrate,
    predict,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-triage",
        description=(
            "Triage PA chest radiographs beside a PACS: receive studies by DICOM, classify "
            "them with a CNN and send results back. Settings come from CXR_* environment "
            "variables or --config FILE (see docs/configuration.md)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (environment wins)")
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING or ERROR (default: CXR_LOG_LEVEL or INFO)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(args.config)
    except (ValidationError, FileNotFoundError, ValueError) as exc:
        print(f"cxr-triage: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level or settings.log_level, settings.log_format)
    io_switches.configure()  # send files as they are; `listen` also receives into the spool
    for name in unknown_environment_names():
        logging.getLogger("worker.settings").warning("ignoring %s: no such setting", name)
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except (DatabaseNotFoundError, SchemaOutOfDateError) as exc:
        print(f"cxr-triage: {exc}", file=sys.stderr)
        return 2
    except (OperationalError, ArgumentError, NoSuchModuleError) as exc:
        # A wrong URL, host, role or database: one line, not a traceback.
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        url = settings.effective_database_url.split("@")[-1]
        print(f"cxr-triage: cannot open the database ({url}): {cause}", file=sys.stderr)
        print("  see docs/deployment.md for creating the role and database", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
