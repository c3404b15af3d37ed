"""``cxr-triage audit``: what happened to a study, and was anything left unanswered."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timedelta
from typing import Any

from worker.db.models import StudyState
from worker.settings import Settings

COLUMNS = (
    "study_instance_uid",
    "state",
    "label",
    "band",
    "low_confidence",
    "priority",
    "accession_number",
    "patient_id",
    "model_version",
    "first_instance_at",
)


def when(text: str) -> datetime:
    """argparse type for times: see :func:`worker.audit.parse_when`."""
    from worker.audit import parse_when

    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="ask the database what happened to studies",
        description="Read-only queries for quality and audit staff, on the same settings as the "
        "service (CXR_DATA_DIR, CXR_DATABASE_URL): no flags needed on the default.",
    )
    asub = p.add_subparsers(dest="audit_command", metavar="QUERY", required=True)

    st = asub.add_parser(
        "studies",
        help="list studies, with filters",
        description="List studies, newest first, filtered.",
    )
    st.add_argument("--since", type=when, help="received at or after (date or 30m/12h/7d)")
    st.add_argument("--until", type=when, help="received before")
    st.add_argument("--state", choices=[str(state) for state in StudyState])
    st.add_argument("--label", help="normal, covid or pneumonia")
    st.add_argument("--band", help="flagged, indeterminate or not flagged")
    st.add_argument(
        "--low-confidence",
        action="store_true",
        help="only studies with an image unlike the model's training data",
    )
    st.add_argument("--priority", help="urgent, soon or routine")
    st.add_argument("--calling-ae", help="studies sent by this AE title")
    st.add_argument("--accession", help="accession number")
    st.add_argument("--patient-id", help="patient ID")
    st.add_argument("--model-version", help="model version of the result")
    st.add_argument("--limit", type=int, default=1000)
    fmt = st.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header row")
    st.set_defaults(func=run_studies)

    sh = asub.add_parser(
        "show",
        help="the full timeline of one study",
        description="Associations, each instance and its eligibility decision, "
        "completion, queueing, inference with probabilities and "
        "timings, produced objects and every delivery attempt.",
    )
    sh.add_argument("study", metavar="STUDY_INSTANCE_UID")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=run_show)

    rc = asub.add_parser(
        "reconcile",
        help="find instances received and never answered",
        description="Every eligible instance received since --since must have a "
        "result, a recorded skip or an open error (failed, "
        "dead_letter). Prints what is unaccounted; exits 1 if "
        "anything is.",
    )
    rc.add_argument("--since", type=when, required=True, help="date or 30m/12h/7d")
    rc.add_argument(
        "--grace",
        type=float,
        default=15.0,
        help="minutes a study may still be in progress (default 15)",
    )
    rc.add_argument("--json", action="store_true")
    rc.set_defaults(func=run_reconcile)

    rj = asub.add_parser(
        "rejections",
        help="refused associations, TLS handshakes and instances",
        description="What the node refused and why, newest first: associations (AE titles, "
        "limits, low disk, TLS), connections over the limit and instances answered with a "
        "failure status.",
    )
    rj.add_argument("--since", type=when, help="date or 30m/12h/7d")
    rj.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    rj.add_argument("--json", action="store_true", help="JSON lines")
    rj.set_defaults(func=run_rejections)

    ex = asub.add_parser(
        "export",
        help="every study's timeline as JSON lines",
        description="Write one JSON object per study (the `show` timeline) for "
        "archiving or analysis.",
    )
    ex.add_argument("--since", type=when, help="date or 30m/12h/7d")
    ex.set_defaults(func=run_export)


def _sessions(settings: Settings) -> Any:
    from worker.db.engine import make_session_factory, open_database

    return make_session_factory(open_database(settings, read_only=True))


def run_studies(args: argparse.Namespace, settings: Settings) -> int:
    from worker.audit import StudyFilter, list_studies

    f = StudyFilter(
        since=args.since,
        until=args.until,
        state=args.state,
        label=args.label,
        band=args.band,
        priority=args.priority,
        low_confidence=True if args.low_confidence else None,
        calling_ae=args.calling_ae,
        accession_number=args.accession,
        patient_id=args.patient_id,
        model_version=args.model_version,
        limit=args.limit,
    )
    with _sessions(settings)() as s:
        rows = list_studies(s, f)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    else:
        # The study UID last and whole, so it can be copied into `audit show`.
        header = f"{'received (UTC)':19} {'state':11} {'label':10} {'priority':8}"
        print(f"{header} {'accession':16} study")
        for r in rows:
            print(
                f"{r['first_instance_at'][:19]:19} {r['state']:11} {r['label'] or '-':10} "
                f"{r['priority'] or '-':8} {r['accession_number'] or '-':16} "
                f"{r['study_instance_uid']}"
            )
        print(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}")
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    from worker.audit import timeline

    with _sessions(settings)() as s:
        story = timeline(s, args.study)
    if story is None:
        print(f"cxr-triage audit show: no study {args.study}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(story, indent=2))
        return 0
    print(
        f"study {story['study_instance_uid']}  state {story['state']}  "
        f"revision {story['revision']}  accession {story['accession_number'] or '-'}"
    )
    for e in story["events"]:
        print(f"  {(e['at'] or '')[:23]:23}  {e['what']:15} {e['detail']}")
    return 0


def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from worker.audit import reconcile

    with _sessions(settings)() as s:
        missing = reconcile(s, args.since, timedelta(minutes=args.grace))
    if args.json:
        for row in missing:
            print(json.dumps(row))
    else:
        for row in missing:
            print(
                f"UNACCOUNTED {row['sop_instance_uid']} (study {row['study_instance_uid']}, "
                f"received {row['received_at'][:19]}): {row['reason']}"
            )
        print(f"{len(missing)} instance(s) unaccounted since {args.since.isoformat()[:19]}")
    return 1 if missing else 0


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    from worker.audit import StudyFilter, list_studies, timeline

    with _sessions(settings)() as s:
        for row in list_studies(s, StudyFilter(since=args.since, limit=10**9)):
            print(json.dumps(timeline(s, row["study_instance_uid"])))
    return 0


def run_rejections(args: argparse.Namespace, settings: Settings) -> int:
    from worker.audit import list_rejections

    with _sessions(settings)() as s:
        rows = list_rejections(s, since=args.since, limit=args.limit)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    for r in rows:
        who = f"{r['calling_ae'] or '?'}@{r['peer_host'] or '?'}:{r['peer_port']}"
        status = f" 0x{r['status']:04X}" if r["status"] is not None else ""
        sop = f" {r['sop_instance_uid']}" if r["sop_instance_uid"] else ""
        print(f"{r['at'][:19]}  {r['kind']:11} {who}{status}{sop}: {r['reason']}")
    print(f"{len(rows)} rejection(s)")
    return 0
