"""The listener killed with SIGKILL mid-study, then restarted: nothing acknowledged is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pynetdicom import AE

from tests import factories
from tests.helpers import rows, wait_for
from tests.services import free_port, wait_port
from worker.db.engine import make_engine
from worker.db.models import QUEUED, Association, Instance, Study


def _listener(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli.main", "listen"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_port(int(env["CXR_PORT"]), timeout=30, process=proc, log=log)
    return proc


@pytest.mark.slow
def test_sigkill_mid_study_then_restart(tmp_path, pg_url, redis_server) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CXR_DATA_DIR": str(tmp_path / "data"),
        "CXR_PORT": str(port),
        "CXR_DATABASE_URL": pg_url,
        "CXR_BROKER_URL": redis_server.url,
        # Longer than the kill and restart take: the study must not become due while the
        # node is down (the first pass after a restart would complete it with two images).
        "CXR_QUIET_SECONDS": "5",
        "CXR_MONITOR_INTERVAL": "0.2",
        "CXR_MIN_FREE_MB": "0",
    }
    log = tmp_path / "listener.log"
    study_uid = "1.2.826.0.1.3680043.8.498.3003"
    images = [factories.radiograph(study_uid=study_uid, seed=i) for i in range(3)]

    first = _listener(env, log)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(images[0].SOPClassUID, images[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
    assert assoc.is_established
    for ds in images[:2]:
        assert assoc.send_c_store(ds).Status == 0
    first.send_signal(signal.SIGKILL)  # mid-study, association still open
    first.wait(10)
    assoc.abort()

    engine = make_engine(pg_url)
    try:
        # Both acknowledged instances survived: rows committed and files in the spool.
        acked = rows(engine, Instance)
        assert sorted(i.sop_instance_uid for i in acked) == sorted(
            d.SOPInstanceUID for d in images[:2]
        )
        spool = tmp_path / "data" / "spool" / "studies"
        for inst in acked:
            assert (spool / inst.spool_path).stat().st_size == inst.size_bytes
        (open_assoc,) = rows(engine, Association)
        assert open_assoc.ended_at is None  # the killed process never closed it

        second = _listener(env, log)
        try:
            ae2 = AE(ae_title="MODALITY")
            ae2.add_requested_context(images[2].SOPClassUID, images[2].file_meta.TransferSyntaxUID)
            assoc2 = ae2.associate("127.0.0.1", port, ae_title="CXR_TRIAGE")
            assert assoc2.send_c_store(images[2]).Status == 0
            assoc2.release()

            def queued() -> Study | None:
                found = rows(engine, Study, Study.study_instance_uid == study_uid)
                return found[0] if found and found[0].state == QUEUED else None

            study = wait_for(queued, timeout=30)
            time.sleep(1.0)  # a few more monitor passes (0.2 s apart) must not queue it again
            messages = [json.loads(m) for m in redis_server.client().lrange("inference", 0, -1)]
            assert [m["headers"]["id"] for m in messages] == [study.task_id]
            assert len(rows(engine, Instance, Instance.study_id == study.id)) == 3
            outcomes = sorted(a.outcome for a in rows(engine, Association))
            assert outcomes == ["interrupted", "released"]
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0, log.read_text()[-3000:]
    finally:
        engine.dispose()
