"""``cxr-triage``: entry point, global options and logging set-up."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from dicom_node.pynetdicom_seam import io_switches
from worker import __version__
from worker.cli import (
    api,
    audit,
    calibrate,
    compile_model,
    crossval,
    db,
    demo,
    echo,
    evaluate,
    familiarity,
    listen,
    predict,
    pull,
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
from worker.settings import Settings, load_settings, setting_name, unknown_environment_names

SUBCOMMANDS = (
    run,
    demo,
    listen,
    work,
    echo,
    send,
    pull,
    replay,
    audit,
    api,
    db,
    train,
    train_lungs,
    crossval,
    evaluate,
    familiarity,
    validate,
    calibrate,
    compile_model,
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
    for command in _leaves(parser):
        # Options every command takes after its name, where a user types them.
        command.add_argument(
            "--data-dir",
            type=Path,
            help="the node's data folder (database, spool, results; default: CXR_DATA_DIR)",
        )
        command.add_argument(
            "--verbose",
            action="store_true",
            help="on an error, also print the underlying library's message and traceback",
        )
    return parser


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that end a command line (``audit studies``, ``db upgrade``, ``send``)."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        return [parser]
    return [leaf for a in nested for p in a.choices.values() for leaf in _leaves(p)]


def settings_problem(exc: ValidationError) -> str:
    """One line per invalid setting, named as the user sets it (CXR_PORT, not ``port``)."""
    lines = []
    for error in exc.errors():
        msg = str(error["msg"])
        if msg.startswith("Value error, "):  # our own validators' words, already with names
            lines.append(msg.removeprefix("Value error, "))
            continue
        name = setting_name(error["loc"])
        value = error.get("input")
        shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
        lines.append(f"{name}: {msg.split(',')[0].lower()}{shown}")
    return "; ".join(lines)


#: Libraries whose log lines repeat, in their words, a failure a command reports in ours.
_CHATTY = ("pynetdicom", "absl", "tensorflow", "h5py", "matplotlib", "PIL")


#: highdicom's warning for a one-component PatientName ("Covid0000", a UUID): anonymisers write
#: such names and the results must carry the source's name unchanged, so it says nothing.
ANONYMISED_NAME = r"The string .* is unlikely to represent the intended person name"


def main(argv: Sequence[str] | None = None) -> int:
    # Everything this process and its children create (spool, results, the SQLite database,
    # logs) holds patient data: owner only. Node and workers run as one user (docs/deployment.md).
    os.umask(0o077)
    warnings.filterwarnings("ignore", message=ANONYMISED_NAME, category=UserWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        # TensorFlow's C++ start-up notices (oneDNN, CPU features) are not ours to show.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        settings: Settings = load_settings(args.config, **overrides)
    except ValidationError as exc:
        print(f"cxr-triage: invalid configuration: {settings_problem(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"cxr-triage: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(
        args.log_level or settings.observability.log_level, settings.observability.log_format
    )
    if not args.verbose and args.command in ("echo", "send", "predict", "validate", "calibrate"):
        for name in _CHATTY:
            logging.getLogger(name).setLevel(logging.CRITICAL)
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
        url = settings.storage.effective_database_url.split("@")[-1]
        print(f"cxr-triage: cannot open the database ({url}): {cause}", file=sys.stderr)
        print("  see docs/deployment.md for creating the role and database", file=sys.stderr)
        return 2
    except Exception as exc:
        # Anything else: one line in our words; the library's text and the traceback with
        # --verbose (or CXR_LOG_LEVEL=DEBUG in a service's log).
        if args.verbose:
            traceback.print_exc()
        print(
            f"cxr-triage {args.command}: failed: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}"
            + ("" if args.verbose else "  (--verbose for details)"),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
