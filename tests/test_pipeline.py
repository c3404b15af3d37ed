"""The study pipeline: model, SC + SR, delivery to a real peer, Celery, retries and replay."""

from __future__ import annotations

import copy
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from tests import factories
from tests.helpers import cli_env, pipeline_worker, rows, send, wait_for
from tests.services import SHARED, StoreSCP, require, shared_file
from worker.db.engine import make_session_factory
from worker.db.models import (
    DEAD_LETTER,
    DONE,
    Delivery,
    ImageResult,
    ProducedObject,
    StepTiming,
    Study,
    StudyResult,
)
from worker.decision import decide_study, operating_point
from worker.outputs import derived_uid

CLI = [sys.executable, "-m", "worker.cli.main"]
T = {"covid": 0.5, "pneumonia": 0.5}


def test_study_decision_takes_the_most_severe_class() -> None:
    normal = {"normal": 0.9, "covid": 0.05, "pneumonia": 0.05}
    viral = {"normal": 0.2, "covid": 0.1, "pneumonia": 0.7}
    covid = {"normal": 0.3, "covid": 0.6, "pneumonia": 0.1}
    assert decide_study([normal], T).priority == "routine"
    assert decide_study([normal], T).band == "not flagged"
    assert decide_study([normal, viral], T).label == "pneumonia"
    assert decide_study([viral, covid], T).priority == "urgent"
    # 0.6 below a 0.7 threshold is within the margin: indeterminate COVID-19, never "normal".
    below = decide_study([covid], {"covid": 0.7, "pneumonia": 0.5})
    assert (below.label, below.band, below.priority) == ("covid", "indeterminate", "soon")
    assert decide_study([covid], {"covid": 0.7, "pneumonia": 0.5}, margin=0.05).label == "normal"
    with pytest.raises(ValueError):
        decide_study([], T)


def test_flagged_beats_indeterminate_beats_not_flagged_across_images() -> None:
    near_covid = {"normal": 0.55, "covid": 0.44, "pneumonia": 0.01}  # the sternotomy CR
    pneumonia = {"normal": 0.3, "covid": 0.1, "pneumonia": 0.6}
    low = {"normal": 0.97, "covid": 0.02, "pneumonia": 0.01}
    assert decide_study([low, near_covid], T).band == "indeterminate"
    study = decide_study([near_covid, pneumonia], T)
    assert (study.label, study.band, study.priority) == ("pneumonia", "flagged", "soon")
    # The study's value for its label is the highest over its images.
    two = decide_study([{"covid": 0.7}, {"covid": 0.9}], T, operating_point="model card")
    assert two.probability == 0.9 and two.operating_point == "model card"


def test_the_operating_point_is_the_cards_unless_a_setting_replaces_it() -> None:
    card = {"thresholds": {"covid": 0.81, "pneumonia": 0.66}, "rule": "5% of normals"}
    op = operating_point(card, None, None)
    assert op.thresholds == {"covid": 0.81, "pneumonia": 0.66} and op.source == "model card"
    assert op.rule == "5% of normals" and "covid 0.810" in op.describe()
    mixed = operating_point(card, 0.9, None)
    assert mixed.thresholds == {"covid": 0.9, "pneumonia": 0.66}
    assert mixed.source == "model card + settings"
    old = operating_point({}, None, None)  # models before 3.0 carry none
    assert old.thresholds == {"covid": 0.5, "pneumonia": 0.5} and old.source == "fallback"


def test_derived_uids_are_stable_and_valid() -> None:
    root = "2.25.121621369618346814594181528227270744860."
    a = derived_uid(root, "1.2.3", 1, "sc", "1.2.3.4")
    assert a == derived_uid(root, "1.2.3", 1, "sc", "1.2.3.4")
    assert a != derived_uid(root, "1.2.3", 2, "sc", "1.2.3.4")
    assert a.startswith(root) and len(a) <= 64 and ".." not in a and not a.endswith(".")


def _pipeline(node: Any) -> Any:
    from models.loader import load_model
    from worker.pipeline import Pipeline

    return Pipeline(node.settings, make_session_factory(node.engine), load_model())


def _study(node: Any, uid: str) -> Study:
    (study,) = rows(node.engine, Study, Study.study_instance_uid == uid)
    return study


def _queued(node: Any, uid: str) -> bool:
    from worker.db.models import QUEUED

    return _study(node, uid).state == QUEUED


def _deliver_all(node: Any, pipeline: Any, outcome: Any) -> None:
    """The first delivery attempt of every object the pipeline planned; each must succeed."""
    from dicom_node.addresses import Destination
    from dicom_node.sender import SenderOptions
    from worker.delivery import attempt_delivery

    for object_id, dest in outcome.to_deliver:
        assert attempt_delivery(
            pipeline.sessions,
            node.settings.storage.outputs_dir,
            object_id,
            Destination.parse(dest),
            1,
            SenderOptions(),
            final=False,
        )


def _received(node: Any, paths: list[Path]) -> Study:
    """Send files to the node and wait until their study is complete: the pipeline's input."""
    assert all(r.ok for r in send(node, paths).results)
    uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    wait_for(lambda: _study(node, uid).state in ("complete", "queued", "queueing"))
    return _study(node, uid)


def test_pipeline_classifies_builds_and_delivers(start_node, pacs) -> None:
    node = start_node(destinations=[pacs.address])  # no broker needed: we call the pipeline
    cr = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    study = _received(node, [cr])
    uid = study.study_instance_uid
    pipeline = _pipeline(node)
    outcome = pipeline.process(study.id, study.revision, study.study_instance_uid)
    assert outcome.state == "delivering" and len(outcome.to_deliver) == 2
    _deliver_all(node, pipeline, outcome)
    study = _study(node, uid)
    assert study.state == DONE
    (result,) = rows(node.engine, StudyResult, StudyResult.study_id == study.id)
    (image,) = rows(node.engine, ImageResult, ImageResult.study_id == study.id)
    assert result.label == image.label and sum(image.probabilities.values()) == pytest.approx(
        1, abs=1e-4
    )
    assert result.model_name == "cxr-triage-default" and len(result.weights_sha256) == 64
    objects = rows(node.engine, ProducedObject, ProducedObject.study_id == study.id)
    assert sorted(o.kind for o in objects) == ["sc", "sr"]
    attempts = rows(node.engine, Delivery)
    assert sorted(d.outcome for d in attempts) == ["delivered", "delivered", "pending", "pending"]
    steps = {t.step for t in rows(node.engine, StepTiming, StepTiming.study_id == study.id)}
    assert {"load", "predict_gradcam", "build_sc", "build_sr", "store"} <= steps
    received = [pydicom.dcmread(p) for p in pacs.received()]
    assert sorted(ds.Modality for ds in received) == ["OT", "SR"]
    assert {ds.StudyInstanceUID for ds in received} == {uid}
    assert {ds.SOPInstanceUID for ds in received} == {o.sop_instance_uid for o in objects}
    # A redelivered task for the same revision does nothing.
    assert pipeline.process(study.id, study.revision, study.study_instance_uid).state == "duplicate"


def test_shadow_mode_records_everything_and_delivers_nothing(start_node, pacs) -> None:
    node = start_node(destinations=[pacs.address])
    node.settings.delivery.shadow_mode = True
    study = _received(node, [shared_file("cr_pa_chest_jpeg_baseline.dcm")])
    outcome = _pipeline(node).process(study.id, study.revision, study.study_instance_uid)
    assert outcome.state == DONE and outcome.to_deliver == []
    (result,) = rows(node.engine, StudyResult, StudyResult.study_id == study.id)
    (image,) = rows(node.engine, ImageResult, ImageResult.study_id == study.id)
    assert result.operating_point.endswith("; shadow mode")
    assert result.band in ("flagged", "indeterminate", "not flagged") and image.band == result.band
    assert sorted(o.kind for o in rows(node.engine, ProducedObject)) == ["sc", "sr"]
    assert rows(node.engine, Delivery) == [] and pacs.received() == []


def test_an_image_unlike_the_training_data_is_low_confidence_everywhere(start_node) -> None:
    """The shipped index, its limit moved to almost nothing: every film is "unlike the training
    data". The study is then low confidence, never routine, in the rows, the SR, the SC and the
    audit; with the shipped limit the same film is not."""
    from dataclasses import replace

    from dicom_node.results import codes
    from models.imaging import read_image
    from worker.audit import timeline

    node = start_node()
    study = _received(node, [shared_file("cr_pa_chest_jpeg_baseline.dcm")])
    pipeline = _pipeline(node)
    shipped = pipeline.model.familiarity
    assert shipped is not None  # the default model ships its index
    pipeline.model.familiarity = replace(shipped, limit=1e-6)
    assert pipeline.process(study.id, study.revision, study.study_instance_uid).state == DONE
    (result,) = rows(node.engine, StudyResult, StudyResult.study_id == study.id)
    (image,) = rows(node.engine, ImageResult, ImageResult.study_id == study.id)
    assert result.low_confidence is True and image.low_confidence is True
    assert image.novelty is not None and image.novelty > 1 and result.priority != "routine"
    objects = {o.kind: o for o in rows(node.engine, ProducedObject)}
    sr = pydicom.dcmread(node.settings.storage.outputs_dir / objects["sr"].path)
    sc = pydicom.dcmread(
        node.settings.storage.outputs_dir / objects["sc"].path, stop_before_pixels=True
    )
    assert codes.CONFIDENCE_CODES[True].value in str(sr.ContentSequence)
    assert "lowconf" in sc.SeriesDescription
    with pipeline.sessions() as s:
        events = (timeline(s, study.study_instance_uid) or {})["events"]
    assert any("low confidence" in e["detail"] for e in events if e["what"] == "study result")

    # The shipped limit: the shared PA film is like the training data.
    pipeline.model.familiarity = shipped
    (pred,) = pipeline.model.predict([read_image(shared_file("cr_pa_chest_jpeg_baseline.dcm"))[0]])
    assert pred.novelty is not None and pred.novelty < 1.0


@pytest.mark.slow
def test_end_to_end_with_celery_retries_dead_letter_and_replay(
    start_node, redis_server, tmp_path
) -> None:
    """Node -> Redis -> real Celery worker -> destination down -> dead letter -> replay."""
    pacs = StoreSCP(tmp_path / "late-pacs")  # not started: the destination is down
    node = start_node(
        broker_url=redis_server.url,
        destinations=[pacs.address],
        delivery_retries=1,
        delivery_backoff=0.2,
    )
    ds = factories.radiograph(rows=512, columns=400)
    with pipeline_worker(node.settings):
        assert send(node, [ds]).results[0].ok
        wait_for(
            lambda: (s := _study(node, ds.StudyInstanceUID)).state == DEAD_LETTER and s, timeout=120
        )
    attempts = sorted((d.attempt, d.outcome) for d in rows(node.engine, Delivery))
    assert attempts == [(0, "pending")] * 2 + [(1, "retry")] * 2 + [(2, "dead")] * 2
    pacs.start()
    try:
        env = {"CXR_DATA_DIR": str(node.settings.storage.data_dir), "PATH": "/usr/bin:/bin"}
        listing = subprocess.run(
            [*CLI, "replay", "--list"], env=env, capture_output=True, text=True, timeout=120
        )
        assert listing.returncode == 0 and listing.stdout.count("dead: object") == 2
        replay = subprocess.run(
            [*CLI, "replay"], env=env, capture_output=True, text=True, timeout=120
        )
        assert replay.returncode == 0, replay.stderr
        assert "2 delivered, 0 failed" in replay.stdout
        assert len(pacs.received()) == 2
    finally:
        pacs.stop()
    assert _study(node, ds.StudyInstanceUID).state == DONE


def _state(db: Path, uid: str) -> str | None:
    import sqlite3

    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "select state from studies where study_instance_uid=?", (uid,)
        ).fetchone()
    return row[0] if row else None


@pytest.mark.slow
def test_run_on_the_embedded_default_with_orthanc(tmp_path: Path) -> None:
    """`cxr-triage run` (SQLite + embedded broker, two processes) between Orthanc and itself."""
    import signal

    from tests.orthanc import Orthanc
    from tests.services import free_port, wait_port

    cr = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", port)
    env = cli_env(
        tmp_path / "data",
        CXR_PORT=str(port),
        CXR_QUIET_SECONDS="0.5",
        CXR_MONITOR_INTERVAL="0.2",
        CXR_DESTINATIONS=orthanc.destination,
    )
    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen([*CLI, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    orthanc.start()
    try:
        wait_port(port, timeout=60, process=proc, log=tmp_path / "run.log")
        uploaded = orthanc.post("/instances", cr.read_bytes())
        orthanc.post("/modalities/cxr/store", uploaded["ID"].encode())
        uid = pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID
        db = tmp_path / "data" / "cxr-triage.sqlite"
        wait_for(lambda: _state(db, uid) == DONE, timeout=180)
        series = orthanc.get(f"/studies/{uploaded['ParentStudy']}/series")
        assert sorted(s["MainDicomTags"].get("Modality") for s in series) == ["CR", "OT", "SR"]
    finally:
        orthanc.stop()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    text = (tmp_path / "run.log").read_text()
    assert code == 0, text[-2000:]
    # `run` said ready only once the node listened and the worker had warmed up.
    ready = text.index("ready in")
    assert text.index("listening as CXR_TRIAGE") < ready and text.index("warm in") < ready


@pytest.mark.slow
def test_results_wait_for_a_destination_that_comes_back(
    start_node, redis_server, tmp_path: Path
) -> None:
    """Destination down at first: the retries deliver once it is back, with no replay."""
    pacs = StoreSCP(tmp_path / "pacs-later")
    node = start_node(
        broker_url=redis_server.url,
        destinations=[pacs.address],
        delivery_retries=4,
        delivery_backoff=1.0,
    )
    # Larger than CXR_SC_MAX_SIZE (1280): the SC is built at half size, same geometry.
    ds = factories.radiograph(rows=1500, columns=1300)
    with pipeline_worker(node.settings):
        assert send(node, [ds]).results[0].ok
        wait_for(lambda: any(d.outcome == "retry" for d in rows(node.engine, Delivery)), 120)
        pacs.start()
        try:
            wait_for(lambda: _study(node, ds.StudyInstanceUID).state == DONE, timeout=60)
        finally:
            pacs.stop()
    outcomes = [d.outcome for d in rows(node.engine, Delivery)]
    assert outcomes.count("delivered") == 2 and "dead" not in outcomes
    received = {pydicom.dcmread(p).Modality: pydicom.dcmread(p) for p in pacs.received()}
    sc = received["OT"]
    assert sc.Columns == 650 and 750 < sc.Rows < 750 * 1.2  # half size, plus the label strip


@pytest.mark.slow
def test_demo_writes_results_to_open(tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    factories.write(factories.radiograph(rows=500, columns=400, seed=3), samples / "pa.dcm")
    factories.write(factories.ct_slice(), samples / "ct.dcm")
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            *CLI,
            "demo",
            "--out",
            str(out),
            "--samples",
            str(samples),
            "--labelled",
            str(tmp_path / "none"),
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " done " in proc.stdout and " skipped " in proc.stdout
    pngs, pages = list(out.glob("gradcam_*.png")), list(out.glob("report_*.html"))
    assert len(pngs) == 1 and len(pages) == 1
    from PIL import Image

    width, height = Image.open(pngs[0]).size
    assert width == 400 and 500 < height < 600  # the radiograph, plus the label strip below
    assert "AI triage, not for diagnosis" in pages[0].read_text()  # the SR's summary
    # Spool, results, database and what the demo wrote hold patient data: owner only.
    made = [out, *out.rglob("*")]
    assert any(p.suffix == ".sqlite" for p in made) and any("outputs" in p.parts for p in made)
    shared = [f"{p} {p.stat().st_mode & 0o777:o}" for p in made if p.stat().st_mode & 0o077]
    assert not shared


@pytest.mark.slow
def test_demo_shows_a_heatmap_and_a_finding(tmp_path: Path) -> None:
    """With the labelled collection beside the checkout, the demo sends one held-out film per
    class: a newcomer sees a coloured heatmap and an SR that names a finding."""
    collection = SHARED / "data" / "cxr3"
    require((collection / "manifest.csv").is_file(), f"{collection} is absent")
    out = tmp_path / "demo"
    proc = subprocess.run(
        [*CLI, "demo", "--out", str(out), "--samples", str(tmp_path / "none"), "--timeout", "300"],
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for label in ("normal", "covid", "pneumonia"):
        assert f"labelled {label} (" in proc.stdout
    import numpy as np
    from PIL import Image

    def coloured(png: Path) -> bool:
        rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
        return bool((np.abs(rgb[..., 0] - rgb[..., 2]) > 40).sum() > 1000)

    assert any(coloured(p) for p in out.glob("gradcam_*.png"))
    reports = [p.read_text() for p in out.glob("report_*.html")]
    assert any("COVID-19" in r or "pneumonia" in r.lower() for r in reports)


def _dog_as_pa_chest(tmp_path: Path, study_uid: str | None = None) -> Path:
    ds = pydicom.dcmread(shared_file("dx_canine_lateral_thorax.dcm"))
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"  # tags lie ...
    # ... and nothing else gives the dog away (the node's non-human rule reads these).
    del ds.AcquisitionDeviceProcessingDescription
    ds.InstitutionName = "General Hospital"
    if study_uid:
        ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "dog_as_pa.dcm"
    ds.save_as(path)
    return path


def test_image_check_refuses_a_dog_tagged_chest_pa(start_node, tmp_path) -> None:
    from worker.audit import timeline

    node = start_node()
    dog = _dog_as_pa_chest(tmp_path)
    study = _received(node, [dog])
    uid = study.study_instance_uid
    assert study.state != "skipped"  # the tags passed the node's eligibility rules
    outcome = _pipeline(node).process(study.id, study.revision, study.study_instance_uid)
    assert outcome.state == "skipped" and not outcome.to_deliver
    study = _study(node, uid)
    assert study.state == "skipped"
    (image,) = rows(node.engine, ImageResult, ImageResult.study_id == study.id)
    assert image.label == "refused" and image.probabilities == {}
    assert image.refusal is not None
    assert image.refusal.startswith("image check: no frontal chest found")
    assert not rows(node.engine, StudyResult, StudyResult.study_id == study.id)
    assert not rows(node.engine, ProducedObject, ProducedObject.study_id == study.id)
    with make_session_factory(node.engine)() as s:
        trail = timeline(s, uid)
    assert "not classified: image check: no frontal chest found" in str(trail)


def test_a_refused_image_does_not_stop_the_chest_beside_it(start_node, tmp_path) -> None:
    node = start_node()
    chest = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    uid = pydicom.dcmread(chest, stop_before_pixels=True).StudyInstanceUID
    dog = _dog_as_pa_chest(tmp_path, study_uid=uid)
    study = _received(node, [chest, dog])
    outcome = _pipeline(node).process(study.id, study.revision, study.study_instance_uid)
    assert outcome.state == "done" and outcome.label in ("normal", "covid", "pneumonia")
    labels = sorted(
        r.label for r in rows(node.engine, ImageResult, ImageResult.study_id == study.id)
    )
    assert labels[-1] == "refused" and labels[0] != "refused"
    kinds = sorted(
        o.kind for o in rows(node.engine, ProducedObject, ProducedObject.study_id == study.id)
    )
    assert kinds == ["sc", "sr"]  # one SC for the chest only


def test_a_destination_that_cannot_be_reached_fails_alone(start_node, pacs) -> None:
    """A host that cannot even be looked up costs its own attempts; the PACS still gets all."""
    from dicom_node.addresses import Destination
    from dicom_node.sender import SenderOptions
    from worker.delivery import attempt_delivery

    # A 64-character label fails in the resolver library, before any packet leaves this host.
    bad = "BAD@" + "x" * 64 + ".invalid:104"
    node = start_node(destinations=[bad, pacs.address])
    cr = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    study = _received(node, [cr])
    uid = study.study_instance_uid
    pipeline = _pipeline(node)
    outcome = pipeline.process(study.id, study.revision, study.study_instance_uid)
    assert len(outcome.to_deliver) == 4
    delivered = [
        attempt_delivery(
            pipeline.sessions,
            node.settings.storage.outputs_dir,
            object_id,
            Destination.parse(dest),
            1,
            SenderOptions(),
            final=True,
        )
        for object_id, dest in outcome.to_deliver
    ]
    assert sorted(delivered) == [False, False, True, True]
    assert len(pacs.received()) == 2
    failed = [d for d in rows(node.engine, Delivery) if d.outcome == "dead"]
    assert len(failed) == 2 and all("could not connect" in (d.error or "") for d in failed)
    assert _study(node, uid).state == "dead_letter"  # not stuck in "delivering"


_DELIVER_ONLY = """
import sys
from pathlib import Path

from dicom_node import synthetic
from worker.celery_app import create_celery
from worker.db.engine import make_session_factory, open_database
from worker.db.models import Delivery, ProducedObject, Study, StudyState, utcnow
from worker.settings import Settings
from worker.tasks import DELIVER_TASK, register_tasks

settings = Settings(data_dir=Path(sys.argv[1]), port=0)
sessions = make_session_factory(open_database(settings))
ds = synthetic.radiograph(rows=32, columns=32)
synthetic.write(ds, settings.storage.outputs_dir / "x.dcm")
with sessions.begin() as s:
    study = Study(study_instance_uid=ds.StudyInstanceUID, state=StudyState.DELIVERING)
    s.add(study)
    s.flush()
    obj = ProducedObject(
        study_id=study.id, revision=study.revision, kind="sc", path="x.dcm",
        sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
        sop_class_uid=ds.SOPClassUID,
    )
    s.add(obj)
    s.flush()
    s.add(Delivery(object_id=obj.id, destination=sys.argv[2], attempt=0, outcome="pending",
                   at=utcnow()))
    object_id = obj.id
app = create_celery(settings)
register_tasks(app, settings)
app.tasks[DELIVER_TASK](object_id, sys.argv[2], 1)
print("tensorflow loaded:", "tensorflow" in sys.modules)
"""


def test_the_delivery_task_does_not_load_the_model(tmp_path, pacs) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _DELIVER_ONLY, str(tmp_path / "data"), pacs.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tensorflow loaded: False" in proc.stdout
    assert len(pacs.received()) == 1


def test_a_new_revision_keeps_the_sc_of_an_unchanged_image(start_node, tmp_path) -> None:
    """A second image reopens the study: the first image's heatmap keeps its UIDs and file, so
    the PACS does not get a second heatmap of it under new UIDs; the new SR cites both."""
    node = start_node()
    first = pydicom.dcmread(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    second = copy.deepcopy(first)
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    paths = []
    for n, ds in enumerate((first, second)):
        paths.append(tmp_path / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    pipeline = _pipeline(node)
    study = _received(node, paths[:1])
    assert pipeline.process(study.id, study.revision, study.study_instance_uid).state == "done"
    (sc1,) = rows(node.engine, ProducedObject, ProducedObject.kind == "sc")
    (sr1,) = rows(node.engine, ProducedObject, ProducedObject.kind == "sr")
    built_at = (node.settings.storage.outputs_dir / sc1.path).stat().st_mtime_ns

    study = _received(node, paths[1:])
    assert study.revision == 2
    assert pipeline.process(study.id, study.revision, study.study_instance_uid).state == "done"
    scs = {
        o.source_sop_instance_uid: o
        for o in rows(node.engine, ProducedObject, ProducedObject.kind == "sc")
    }
    assert scs[first.SOPInstanceUID].sop_instance_uid == sc1.sop_instance_uid
    assert (
        node.settings.storage.outputs_dir / sc1.path
    ).stat().st_mtime_ns == built_at  # not rebuilt
    assert scs[second.SOPInstanceUID].series_instance_uid == sc1.series_instance_uid
    srs = rows(node.engine, ProducedObject, ProducedObject.kind == "sr")
    assert len(srs) == 2 and sr1.sop_instance_uid in {o.sop_instance_uid for o in srs}
    new_sr = next(o for o in srs if o.revision == 2)
    cited = str(
        pydicom.dcmread(
            node.settings.storage.outputs_dir / new_sr.path
        ).CurrentRequestedProcedureEvidenceSequence
    )
    assert sc1.sop_instance_uid in cited and scs[second.SOPInstanceUID].sop_instance_uid in cited


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS:UserWarning")  # "81", on purpose
def test_a_chest_without_type2_attributes_still_gets_its_results(start_node, pacs) -> None:
    """An anonymised DX (no PatientBirthDate, StudyDate, AccessionNumber, …), accepted as a PA
    chest by CXR_ASSUME_PA_CHEST: its SC and SR reach the PACS, with those attributes empty."""

    dx = shared_file("dx_chest_no_view_tags.dcm")
    assert "PatientBirthDate" not in pydicom.dcmread(dx, stop_before_pixels=True)
    node = start_node(destinations=[pacs.address], assume_pa_chest=True)
    study = _received(node, [dx])
    pipeline = _pipeline(node)
    outcome = pipeline.process(study.id, study.revision, study.study_instance_uid)
    assert outcome.state == "delivering", outcome
    _deliver_all(node, pipeline, outcome)
    assert _study(node, study.study_instance_uid).state == DONE
    received = [pydicom.dcmread(p) for p in pacs.received()]
    assert sorted(ds.Modality for ds in received) == ["OT", "SR"]
    for ds in received:
        assert ds.PatientBirthDate == "" and ds.AccessionNumber == ""


def _as_new_study(source: Path, path: Path) -> Path:
    """The same radiograph as a study of its own (new study, series and SOP instance UIDs)."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path)
    return path


@pytest.mark.slow
def test_queued_studies_share_one_model_call_with_their_own_results(start_node, tmp_path) -> None:
    from models.imaging import dicom_to_image
    from worker.db.models import QUEUED, StudyEvent

    node = start_node(batch_size=3, batch_wait=0.0)
    cr = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    dog = _dog_as_pa_chest(tmp_path)  # refused by the image check: the batch goes on without it
    paths = [_as_new_study(cr, tmp_path / f"cr{n}.dcm") for n in range(3)] + [dog]
    studies = [_received(node, [p]) for p in paths]
    for study in studies:  # tasks sent to the embedded broker, which no worker reads here
        wait_for(partial(_queued, node, study.study_instance_uid))
    pipeline = _pipeline(node)
    leader, *others = studies
    outcomes = pipeline.process_batch(leader.id, leader.revision, leader.study_instance_uid)
    # The leader and the two oldest waiting studies (batch size 3); the fourth waits its turn.
    assert [o.state for o in outcomes] == ["done", "done", "done"]
    assert _study(node, studies[3].study_instance_uid).state == QUEUED
    events = rows(node.engine, StudyEvent, StudyEvent.detail == f"batched with study {leader.id}")
    assert sorted(e.study_id for e in events) == sorted(s.id for s in others[:2])
    # Each study has its own result, equal to what the model says of its image alone.
    alone = pipeline.model.predict([dicom_to_image(pydicom.dcmread(cr))])[0].probabilities
    for study in studies[:3]:
        (image,) = rows(node.engine, ImageResult, ImageResult.study_id == study.id)
        assert image.probabilities == pytest.approx(alone, abs=1e-4)
        objects = rows(node.engine, ProducedObject, ProducedObject.study_id == study.id)
        assert sorted(o.kind for o in objects) == ["sc", "sr"]
    # Their own tasks, arriving later, find them done.
    assert [
        pipeline.process_batch(s.id, s.revision, s.study_instance_uid)[0].state for s in others[:2]
    ] == [
        "duplicate",
        "duplicate",
    ]
    # The fourth (the dog) is processed by its own task: refused alone, skipped.
    assert (
        pipeline.process_batch(studies[3].id, studies[3].revision, studies[3].study_instance_uid)[
            0
        ].state
        == "skipped"
    )


@pytest.mark.slow  # over 5 s on 2 cores (pytest --durations)
def test_a_task_whose_study_is_in_a_dead_batch_works_meanwhile_then_takes_it_over(
    start_node, tmp_path, monkeypatch
) -> None:
    from worker import claims

    node = start_node(batch_size=4, batch_wait=0.0)
    cr = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    studies = [_received(node, [_as_new_study(cr, tmp_path / f"cr{n}.dcm")]) for n in range(3)]
    for study in studies:
        wait_for(partial(_queued, node, study.study_instance_uid))
    sessions = make_session_factory(node.engine)
    # A batch whose worker died after taking the oldest study.
    (held,) = claims.claim_waiting(sessions, leader=10**9, limit=1, lease=2.0)
    assert held.study_id == studies[0].id
    with sessions.begin() as s:  # another process's lease, which nobody renews
        s.execute(update(Study).where(Study.id == held.study_id).values(lease_owner="gone:1"))
    outcomes = _pipeline(node).process_batch(
        studies[0].id, studies[0].revision, studies[0].study_instance_uid
    )
    # Its own task batched the two others meanwhile, then took its study over from the dead
    # batch once the lease ran out: first outcome its own.
    assert [o.state for o in outcomes] == ["done", "done", "done"]
    assert all(_study(node, s.study_instance_uid).state == "done" for s in studies)


def test_a_worker_that_lost_its_lease_records_nothing(start_node, tmp_path) -> None:
    """A worker that hung past its lease wakes to find the study taken over: it leaves it."""
    from worker import claims
    from worker.db.models import QUEUED

    node = start_node()
    cr = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    study = _received(node, [_as_new_study(cr, tmp_path / "cr.dcm")])
    wait_for(lambda: _study(node, study.study_instance_uid).state == QUEUED)
    sessions = make_session_factory(node.engine)
    assert claims.claim(sessions, study.id, study.revision, 30.0) is None
    with sessions.begin() as s:  # meanwhile the sweeper re-dispatched it, another worker took it
        s.execute(update(Study).where(Study.id == study.id).values(lease_owner="other:1"))
    (outcome,) = _pipeline(node)._process(
        [claims.Claimed(study.id, study.revision, study.study_instance_uid)]
    )
    assert outcome.state == "taken over"
    after = _study(node, study.study_instance_uid)
    assert after.state == "processing" and after.lease_owner == "other:1"
    assert rows(node.engine, StudyResult, StudyResult.study_id == study.id) == []
