"""``cxr-triage pull``: a day of chest studies from a real PACS (Orthanc) into the node."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests import factories
from tests.helpers import cli_env, pipeline_worker, rows, wait_for
from tests.orthanc import Orthanc
from tests.services import free_port
from tests.test_classifier import CLI
from worker.db.models import DONE, Instance, Study


def _pull(node: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "pull", "--interval", "0", "--quiet", *args],
        env=cli_env(node.settings.storage.data_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], text: str) -> None:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("cxr-triage pull:")]
    assert proc.returncode == 2 and len(lines) == 1 and text in lines[0], proc.stderr


def test_pull_says_what_is_wrong_in_one_line(start_node) -> None:
    node = start_node()
    nobody = f"PACS@127.0.0.1:{free_port()}"
    _one_line_error(_pull(node, "--from", nobody), "could not connect")
    proc = _pull(node, "--from", nobody, "--since", "2026-12-02", "--until", "2026-12-01")
    _one_line_error(proc, "--since is after --until")
    assert not (node.settings.storage.data_dir / "pull-state.json").exists()


@pytest.mark.slow
def test_pull_retrieves_a_day_of_chest_studies_and_they_end_done(
    start_node, redis_server, tmp_path: Path
) -> None:
    node = start_node(broker_url=redis_server.url)
    orthanc = Orthanc(
        tmp_path / "orthanc",
        node.listener.port,
        config={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True},
    )
    orthanc.start()
    try:
        day, other_day = "20261201", "20261115"
        wanted = [generate_uid(), generate_uid()]
        studies = [
            # Two chest studies on the day (one of two images), CR and DX.
            factories.radiograph(modality="CR", study_uid=wanted[0], StudyDate=day, seed=1),
            factories.radiograph(modality="CR", study_uid=wanted[0], StudyDate=day, seed=2),
            factories.radiograph(modality="DX", study_uid=wanted[1], StudyDate=day, seed=3),
            # Another day, and a CT: not matched.
            factories.radiograph(modality="CR", StudyDate=other_day, seed=4),
        ]
        ct = factories.ct_slice()
        ct.StudyDate = day
        for ds in [*studies, ct]:
            orthanc.post("/instances", factories.encode(ds))
        pacs = orthanc.destination
        window = ("--since", "2026-12-01", "--until", "2026-12-01")

        # A query that matches more than it may: cancelled, one line, nothing moved.
        _one_line_error(_pull(node, "--from", pacs, *window, "--max-matches", "1"), "narrow")
        assert rows(node.engine, Study) == []

        with pipeline_worker(node.settings):
            proc = _pull(node, "--from", pacs, *window)
            assert proc.returncode == 0, proc.stderr
            assert "2 studies on" in proc.stdout and "moved 2 of 2" in proc.stdout

            def done() -> bool:
                found = rows(node.engine, Study)
                return len(found) == 2 and all(s.state == DONE for s in found)

            wait_for(done, timeout=180)
        assert sorted(s.study_instance_uid for s in rows(node.engine, Study)) == sorted(wanted)
        assert len(rows(node.engine, Instance)) == 3

        # Resumable: a second run moves nothing again.
        again = _pull(node, "--from", pacs, *window)
        assert again.returncode == 0 and "2 already moved, 0 to move" in again.stdout
        state = json.loads((node.settings.storage.data_dir / "pull-state.json").read_text())
        assert {s["ok"] for s in state[pacs].values()} == {True}

        # A destination the PACS does not know: a failed move, recorded, exit 1.
        proc = _pull(
            node, "--from", pacs, *window, "--move-to", "NOBODY", "--state",
            str(tmp_path / "other-state.json"),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        other = json.loads((tmp_path / "other-state.json").read_text())
        assert {s["ok"] for s in other[pacs].values()} == {False}
    finally:
        orthanc.stop()
