"""``cxr-triage pull``: retrieve chest studies from a PACS into the node (C-FIND, C-MOVE)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from tqdm import tqdm

from worker.cli import destination
from worker.settings import Settings


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull",
        help="retrieve studies from a PACS into the node (C-FIND, then C-MOVE to the node)",
        description=(
            "Ask a PACS for the studies with CR or DX in a date range (C-FIND, Study Root), "
            "then ask it to send each to the node's AE title (C-MOVE): they take the path a "
            "pushed study takes. The node must be running and the PACS must know its AE title "
            "as a move destination. Resumable: moved studies are recorded in --state and not "
            "moved again. For local validation without sending results, run the node with "
            "CXR_SHADOW_MODE=true."
        ),
    )
    p.add_argument("--from", dest="pacs", required=True, type=destination, metavar="AET@HOST:PORT")
    p.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="first study date")
    p.add_argument("--until", type=_day, metavar="YYYY-MM-DD", help="last study date")
    p.add_argument(
        "--modality", action="append", metavar="MOD", help="modality in study (default CR, DX)"
    )
    p.add_argument(
        "--move-to", metavar="AET", help="the move destination (default: the node's CXR_AE_TITLE)"
    )
    p.add_argument(
        "--aet", "--calling-ae", dest="aet",
        help="the AE title to call as (default: the node's, which the PACS knows)",
    )  # fmt: skip
    p.add_argument("--max-matches", type=int, default=5000, metavar="N")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S",
        help="seconds between moves, so a pull leaves the PACS to its modalities (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--state", type=Path, metavar="FILE",
        help="the record of moved studies (default: DATA_DIR/pull-state.json)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list the matches, move nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: unreadable pull state ({exc}); move it away to start over"
        ) from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a pull state file")
    return data


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)  # a crash mid-write leaves the previous record whole


def run(args: argparse.Namespace, settings: Settings) -> int:
    from dicom_node.pull import DEFAULT_MODALITIES, PullError, find_studies, move_study
    from dicom_node.sender import AssociationFailed

    if args.since and args.until and args.since > args.until:
        print("cxr-triage pull: --since is after --until", file=sys.stderr)
        return 2
    options = settings.sender_options(calling_ae=args.aet or settings.node.ae_title)
    move_to = args.move_to or settings.node.ae_title
    state_file = args.state or settings.storage.data_dir / "pull-state.json"
    try:
        state = _load_state(state_file)
        matches = find_studies(
            args.pacs,
            options,
            modalities=args.modality or DEFAULT_MODALITIES,
            since=args.since,
            until=args.until,
            max_matches=args.max_matches,
        )
    except (AssociationFailed, PullError, ValueError) as exc:
        print(f"cxr-triage pull: {exc}", file=sys.stderr)
        return 2
    moved = state.setdefault(str(args.pacs), {})
    todo = [m for m in matches if moved.get(m.study_instance_uid, {}).get("ok") is not True]
    print(
        f"{len(matches)} studies on {args.pacs}; {len(matches) - len(todo)} already moved, "
        f"{len(todo)} to move to {move_to}"
    )
    if args.dry_run:
        for m in todo:
            print(f"  {m.study_date or '-'} {m.modalities or '-'} {m.study_instance_uid}")
        return 0
    failed = 0
    bar = tqdm(todo, unit="study", disable=args.quiet or None, file=sys.stderr)
    for n, m in enumerate(bar):
        if n:
            time.sleep(max(args.interval, 0.0))
        try:
            result = move_study(args.pacs, options, m.study_instance_uid, move_to)
        except (AssociationFailed, PullError) as exc:
            failed += 1
            moved[m.study_instance_uid] = {"ok": False, "error": str(exc)}
            print(f"  {m.study_instance_uid}: {exc}", file=sys.stderr)
        else:
            failed += not result.ok
            moved[m.study_instance_uid] = {
                "ok": result.ok,
                "status": f"0x{result.status:04X}",
                "completed": result.completed,
                "failed": result.failed,
            }
            if not result.ok:
                print(
                    f"  {m.study_instance_uid}: status 0x{result.status:04X}, "
                    f"{result.failed} instance(s) failed",
                    file=sys.stderr,
                )
        _save_state(state_file, state)
    bar.close()
    print(f"moved {len(todo) - failed} of {len(todo)} studies; record in {state_file}")
    return 0 if failed == 0 else 1
