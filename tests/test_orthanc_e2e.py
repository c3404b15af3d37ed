"""A study sent by a real PACS (Orthanc) comes back to it as SC + SR series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.helpers import pipeline_worker, rows, wait_for
from tests.orthanc import Orthanc
from tests.services import require, shared_file
from worker.db.models import DONE, Delivery, ProducedObject, Study, StudyResult


@pytest.mark.slow
def test_orthanc_pushes_a_study_and_gets_results_back(
    start_node, redis_server, pg_url, tmp_path: Path
) -> None:
    cr = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    node = start_node(broker_url=redis_server.url, database_url=pg_url)
    orthanc = Orthanc(tmp_path / "orthanc", node.listener.port)
    orthanc.start()
    try:
        node.settings.delivery.destinations = [orthanc.destination]
        with pipeline_worker(node.settings):
            uploaded = orthanc.post("/instances", cr.read_bytes())
            orthanc_study = uploaded["ParentStudy"]
            job = orthanc.post("/modalities/cxr/store", uploaded["ID"].encode())
            assert job.get("FailedInstancesCount", 0) == 0, job
            uid = pydicom.dcmread(cr, stop_before_pixels=True).StudyInstanceUID

            def study_done() -> bool:
                found = rows(node.engine, Study, Study.study_instance_uid == uid)
                return bool(found) and found[0].state == DONE

            wait_for(study_done, timeout=180)
        series = orthanc.get(f"/studies/{orthanc_study}/series")
        modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
        assert modalities == ["CR", "OT", "SR"]
        (study,) = rows(node.engine, Study, Study.study_instance_uid == uid)
        (result,) = rows(node.engine, StudyResult, StudyResult.study_id == study.id)
        objects = rows(node.engine, ProducedObject, ProducedObject.study_id == study.id)
        deliveries = [d for d in rows(node.engine, Delivery) if d.attempt > 0]
        assert {d.outcome for d in deliveries} == {"delivered"} and len(deliveries) == 2
        assert {d.destination for d in deliveries} == {orthanc.destination}
        assert result.label in ("normal", "covid", "pneumonia")
        require(shutil.which("dciodvfy") is not None, "dicom3tools (dciodvfy) is not installed")
        stored = [
            i
            for s in series
            if s["MainDicomTags"].get("Modality") in ("OT", "SR")
            for i in s["Instances"]
        ]
        for i, instance in enumerate(stored):
            path = tmp_path / f"stored{i}.dcm"
            path.write_bytes(orthanc.get_bytes(f"/instances/{instance}/file"))
            ds = pydicom.dcmread(path)
            assert ds.SOPInstanceUID in {o.sop_instance_uid for o in objects}
            out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
            assert errors == [], errors
    finally:
        orthanc.stop()
