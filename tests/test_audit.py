"""``cxr-triage audit``: studies, show, reconcile and export on a node's real database."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from typing import Any

import pytest

from tests import factories
from tests.helpers import rows, send, wait_for
from worker.db.engine import make_session_factory
from worker.db.models import Study

CLI = [sys.executable, "-m", "worker.cli.main"]


def _audit(node: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"CXR_DATA_DIR": str(node.settings.storage.data_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [*CLI, "audit", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _state(node: Any, uid: str) -> str:
    (study,) = rows(node.engine, Study, Study.study_instance_uid == uid)
    return study.state


@pytest.fixture
def processed(start_node) -> tuple[Any, Any, Any, Any]:
    """A node with one processed PA study, one skipped CT study, one PA study left queued."""
    from models.loader import load_model
    from worker.pipeline import Pipeline

    node = start_node()
    pa, ct, pending = factories.radiograph(), factories.ct_slice(), factories.radiograph(seed=5)
    assert all(r.ok for r in send(node, [pa, ct, pending]).results)
    wait_for(lambda: _state(node, pa.StudyInstanceUID) == "queued", timeout=30)
    wait_for(lambda: _state(node, pending.StudyInstanceUID) == "queued", timeout=30)
    wait_for(lambda: _state(node, ct.StudyInstanceUID) == "skipped", timeout=30)
    (study,) = rows(node.engine, Study, Study.study_instance_uid == pa.StudyInstanceUID)
    Pipeline(node.settings, make_session_factory(node.engine), load_model()).process(
        study.id, study.revision, study.study_instance_uid
    )
    return node, pa, ct, pending


@pytest.mark.slow
def test_studies_json_csv_and_filters(processed) -> None:
    node, pa, ct, pending = processed
    out = _audit(node, "studies", "--json")
    assert out.returncode == 0, out.stderr
    found = {r["study_instance_uid"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(found) == {pa.StudyInstanceUID, ct.StudyInstanceUID, pending.StudyInstanceUID}
    assert found[pa.StudyInstanceUID]["state"] == "done"
    assert found[pa.StudyInstanceUID]["label"] in ("normal", "covid", "pneumonia")
    assert found[pa.StudyInstanceUID]["priority"] in ("routine", "soon", "urgent")
    assert found[ct.StudyInstanceUID]["state"] == "skipped"
    assert found[ct.StudyInstanceUID]["label"] is None
    skipped = _audit(node, "studies", "--state", "skipped", "--json").stdout.splitlines()
    assert [json.loads(x)["study_instance_uid"] for x in skipped] == [ct.StudyInstanceUID]
    label = found[pa.StudyInstanceUID]["label"]
    by_label = _audit(node, "studies", "--label", label, "--json").stdout.splitlines()
    assert [json.loads(x)["study_instance_uid"] for x in by_label] == [pa.StudyInstanceUID]
    assert (
        len(_audit(node, "studies", "--calling-ae", "TEST_SCU", "--json").stdout.splitlines()) == 3
    )
    assert _audit(node, "studies", "--calling-ae", "NOBODY", "--json").stdout == ""
    table = _audit(node, "studies").stdout
    assert pa.StudyInstanceUID in table  # whole, so it can be copied into `audit show`
    assert _audit(node, "studies", "--since", "1d", "--json").stdout.count("\n") == 3
    assert _audit(node, "studies", "--until", "2000-01-01", "--json").stdout == ""
    sheet = list(csv.DictReader(io.StringIO(_audit(node, "studies", "--csv").stdout)))
    assert len(sheet) == 3 and "study_instance_uid" in sheet[0]
    table = _audit(node, "studies").stdout
    assert "3 studies" in table and "done" in table
    bad = _audit(node, "studies", "--since", "yesterday")
    assert bad.returncode == 2 and "30m, 12h, 7d" in bad.stderr


@pytest.mark.slow
def test_show_tells_the_whole_story(processed) -> None:
    node, pa, ct, _ = processed
    story = _audit(node, "show", pa.StudyInstanceUID)
    assert story.returncode == 0, story.stderr
    for expected in (
        "association",
        "TEST_SCU -> CXR_TRIAGE",
        "ELIGIBLE",
        "receiving -> complete",
        "complete -> queueing",
        "queueing -> queued",
        "image result",
        "study result",
        "produced sc",
        "produced sr",
        "timings",
        "-> done",
    ):
        assert expected in story.stdout, expected
    skipped = _audit(node, "show", ct.StudyInstanceUID, "--json")
    events = json.loads(skipped.stdout)["events"]
    assert any("skipped [modality]" in e["detail"] for e in events)
    missing = _audit(node, "show", "1.2.3.4")
    assert missing.returncode == 1 and "no study" in missing.stderr


@pytest.mark.slow
def test_reconcile_and_export(processed) -> None:
    node, pa, _ct, pending = processed
    # The queued, never processed study is unaccounted once its grace period is over.
    stuck = _audit(node, "reconcile", "--since", "1h", "--grace", "0")
    assert stuck.returncode == 1
    assert pending.SOPInstanceUID in stuck.stdout and pa.SOPInstanceUID not in stuck.stdout
    assert "1 instance(s) unaccounted" in stuck.stdout
    # Within the default 15 minutes it is still in progress, not missing.
    assert _audit(node, "reconcile", "--since", "1h").returncode == 0
    lines = _audit(node, "export").stdout.splitlines()
    assert len(lines) == 3 and all(json.loads(x)["events"] for x in lines)


def test_rejections_are_listed_by_audit_and_the_api(start_node) -> None:
    node = start_node(allowed_calling_aets=["MODALITY"])
    summary = send(node, [factories.radiograph()], calling_ae="STRANGER")
    assert summary.results[0].status is None
    out = _audit(node, "rejections")
    assert out.returncode == 0, out.stderr
    assert "STRANGER@127.0.0.1" in out.stdout and "allow-list" in out.stdout
    lines = _audit(node, "rejections", "--json", "--since", "1h").stdout.splitlines()
    (row,) = [json.loads(line) for line in lines]
    assert row["kind"] == "association" and row["calling_ae"] == "STRANGER"


def test_read_only_commands_never_create_a_database(tmp_path) -> None:
    env = {"CXR_DATA_DIR": str(tmp_path / "nowhere"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [*CLI, "audit", "studies"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "no database at" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_wrong_database_url_is_one_line(tmp_path) -> None:
    env = {
        "CXR_DATA_DIR": str(tmp_path),
        "CXR_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:5432/no_such_database",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [*CLI, "audit", "studies"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot open the database" in out.stderr and "no_such_database" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3
