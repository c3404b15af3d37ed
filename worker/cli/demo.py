"""``cxr-triage demo``: the whole pipeline on sample studies, results in a folder to open."""

from __future__ import annotations

import argparse
import html
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from worker.cli.processes import ProcessGroup
from worker.db.models import StudyState
from worker.settings import Settings, load_settings

# The demo stops waiting at a terminal state, or at failed (which needs a person).
TERMINAL = {str(state) for state in StudyState if state.terminal} | {str(StudyState.FAILED)}
_SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_SHARED_SAMPLES = _SHARED_DATA / "dicom"
#: The labelled collection the demo takes one held-out adult film per class from.
_LABELLED = _SHARED_DATA / "cxr3"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run node + worker on sample studies and write the results as PNG and HTML",
        description=(
            "Start a node and a worker on the embedded default in OUT/data, send the sample "
            "studies (the real files in ../shared/data/dicom when present, else synthetic ones "
            "made on the fly) and, when ../shared/data/cxr3 is present, one labelled adult film "
            "per class (normal, COVID-19, pneumonia) that the shipped model did not train on, "
            "wait for the results, print a table with each known label beside its result, and "
            "write each Grad-CAM SC as PNG and each SR as HTML into OUT."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("cxr-triage-demo"), help="output folder")
    p.add_argument("--samples", type=Path, help=f"DICOM folder (default {_SHARED_SAMPLES})")
    p.add_argument(
        "--labelled",
        type=Path,
        default=_LABELLED,
        help=f"labelled collection with manifest.csv (default {_LABELLED})",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for results")
    p.set_defaults(func=run)


def _samples(args: argparse.Namespace, out: Path) -> list[Path]:
    folder = args.samples or _SHARED_SAMPLES
    files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if files:
        return files
    from dicom_node import synthetic

    made = out / "samples"
    study = "1.2.826.0.1.3680043.8.498.77001"
    return [
        synthetic.write(synthetic.radiograph(seed=1, rows=1000, columns=800), made / "pa1.dcm"),
        synthetic.write(
            synthetic.radiograph(seed=2, rows=1000, columns=800, study_uid=study), made / "pa2.dcm"
        ),
        synthetic.write(
            synthetic.radiograph(seed=3, view_position="LL", study_uid=study), made / "lateral.dcm"
        ),
    ]


def _labelled_examples(collection: Path, out: Path) -> dict[Path, str]:
    """The first adult film of each class in the shipped model's test split (held out from its
    training), wrapped as a DICOM PA chest study each: file -> its label.

    Chosen by their place in the split, not by what the model says of them, so the demo shows
    the model as it is, a wrong answer included.
    """
    import csv

    import models
    from dicom_node import synthetic

    split = Path(models.__file__).parent / "default" / "split.csv"
    manifest = collection / "manifest.csv"
    if not (split.is_file() and manifest.is_file()):
        return {}
    with manifest.open(newline="") as fh:
        adult = {
            f"{collection.name}/{row['file']}"
            for row in csv.DictReader(fh)
            if row.get("age_group") == "adult"
        }
    chosen: dict[str, str] = {}
    with split.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test" and row["file"] in adult and row["label"] not in chosen:
                chosen[row["label"]] = row["file"]
    made = out / "samples"
    examples: dict[Path, str] = {}
    for label, key in sorted(chosen.items()):
        picture = collection.parent / key
        target = made / f"labelled_{label}.dcm"
        ds = synthetic.from_picture(
            picture,
            f"demo-{key}",
            patient_id=f"DEMO_{label.upper()}",
            StudyDescription=f"demo: labelled {label} ({Path(key).name})",
        )
        examples[synthetic.write(ds, target)] = f"{label} ({Path(key).name})"
    return examples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _render_sr(path: Path, target: Path) -> None:
    if shutil.which("dsr2html"):
        done = subprocess.run(["dsr2html", str(path), str(target)], capture_output=True)
        if done.returncode == 0:
            return
    proc = (
        subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
        if shutil.which("dsrdump")
        else None
    )
    text = proc.stdout if proc and proc.returncode == 0 else f"(install dcmtk to render {path})"
    target.write_text(f"<html><body><pre>{html.escape(text)}</pre></body></html>\n")


def _fail(what: str, group: ProcessGroup, log: Path, lines: int = 40) -> None:
    """Say what went wrong, which process exited, and the end of the log."""
    exited = group.first_exited()
    if exited is not None:
        what += f": {group.describe(exited)} exited with {exited.returncode}"
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        tail = []
    print(f"cxr-triage demo: {what}; the end of {log}:", file=sys.stderr)
    print("\n".join(f"  {line}" for line in tail), file=sys.stderr)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import pydicom
    from PIL import Image
    from sqlalchemy import select

    from dicom_node.addresses import Destination
    from dicom_node.sender import SenderOptions, send_files
    from worker.cli.processes import child_env, cli_command
    from worker.db.engine import make_engine, make_session_factory, open_database
    from worker.db.models import ImageResult, ProducedObject, Study, StudyResult

    out = args.out.resolve()
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = child_env(
        CXR_DATA_DIR=str(data),
        CXR_PORT=str(port),
        CXR_BIND="127.0.0.1",
        CXR_QUIET_SECONDS="1",
        CXR_MONITOR_INTERVAL="0.3",
        CXR_MIN_FREE_MB="0",
        CXR_LOG_LEVEL="WARNING",
    )
    # Always the embedded default, whatever the caller's environment points at.
    for key in ("CXR_DATABASE_URL", "CXR_BROKER_URL", "CXR_DESTINATIONS"):
        env.pop(key, None)
    demo_settings = load_settings(
        data_dir=data, port=port, database_url=None, broker_url=None, destinations=[]
    )
    open_database(demo_settings).dispose()
    files = _samples(args, out)
    labelled = _labelled_examples(args.labelled, out)
    files += list(labelled)
    known = {
        pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID: v for f, v in labelled.items()
    }
    print(
        f"demo in {out}: {len(files)} sample file(s); node on 127.0.0.1:{port}, log {out}/demo.log"
    )
    group = ProcessGroup(
        [[*cli_command(), "listen"], [*cli_command(), "work"]], env, log=out / "demo.log"
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or group.first_exited():
                _fail("the node did not start", group, out / "demo.log")
                return 1
            time.sleep(0.2)
        summary = send_files(
            files, Destination("CXR_TRIAGE", "127.0.0.1", port), SenderOptions(calling_ae="DEMO")
        )
        print(f"sent {summary.sent} of {len(files)} file(s)")
        engine = make_engine(demo_settings.storage.effective_database_url)
        sessions = make_session_factory(engine)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            with sessions() as s:
                states = [st.state for st in s.scalars(select(Study))]
            if states and all(state in TERMINAL for state in states):
                break
            if group.first_exited():
                _fail("a process stopped", group, out / "demo.log")
                return 1
            time.sleep(0.5)
        else:
            _fail(f"no result after {args.timeout:.0f} s", group, out / "demo.log")
            return 1
    finally:
        group.stop()

    outputs = demo_settings.storage.outputs_dir
    print(f"\n{'study':24} {'state':10} {'result':26} {'priority':9} probabilities")
    print(f"{'':24} known label (held out from training), where the sample has one")
    with sessions() as s:
        for study in s.scalars(select(Study).order_by(Study.id)):
            result = s.scalars(select(StudyResult).where(StudyResult.study_id == study.id)).first()
            label = f"{result.label} ({result.band})" if result else "-"
            prio = result.priority if result else "-"
            probs = [
                r.probabilities
                for r in s.scalars(select(ImageResult).where(ImageResult.study_id == study.id))
            ]
            shown = "; ".join(" ".join(f"{k}={v:.2f}" for k, v in p.items()) for p in probs)
            print(
                f"...{study.study_instance_uid[-21:]:21} {study.state:10} {label:26} "
                f"{prio:9} {shown or '(no PA chest image)'}"
            )
            if study.study_instance_uid in known:
                print(f"{'':24} labelled {known[study.study_instance_uid]}")
        for obj in s.scalars(select(ProducedObject).order_by(ProducedObject.id)):
            path = outputs / obj.path
            if obj.kind == "sc":
                target = out / f"gradcam_{obj.sop_instance_uid[-12:]}.png"
                Image.fromarray(pydicom.dcmread(path).pixel_array).save(target)
            else:
                target = out / f"report_{obj.sop_instance_uid[-12:]}.html"
                _render_sr(path, target)
            print(f"wrote {target}")
    engine.dispose()
    print("NOT FOR DIAGNOSTIC USE")
    return 0
