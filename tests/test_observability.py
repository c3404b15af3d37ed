"""/metrics, /healthz and /readyz over real HTTP, on a running node."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests import factories
from tests.helpers import rows, send, wait_for
from tests.services import free_port
from worker.db.models import Study


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as rsp:
            return rsp.status, rsp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_follow_the_database(start_node) -> None:
    port = free_port()
    node = start_node(metrics_port=port)
    pa, ct = factories.radiograph(), factories.ct_slice()
    assert all(r.ok for r in send(node, [pa, ct]).results)

    def state(uid: str) -> str:
        return rows(node.engine, Study, Study.study_instance_uid == uid)[0].state

    wait_for(
        lambda: state(pa.StudyInstanceUID) == "queued" and state(ct.StudyInstanceUID) == "skipped"
    )
    m = _samples(port)
    from worker.db.models import StudyState

    exported = {dict(k[1])["state"] for k in m if k[0] == "cxr_studies"}
    assert exported == {str(state) for state in StudyState}  # delivering included
    assert m[("cxr_studies", (("state", "queued"),))] == 1
    assert m[("cxr_studies", (("state", "skipped"),))] == 1
    assert m[("cxr_instances_received_total", (("eligible", "true"),))] == 1
    assert m[("cxr_instances_received_total", (("eligible", "false"),))] == 1
    assert m[("cxr_queue_depth", ())] == 1  # the embedded broker holds the queued study
    assert m[("cxr_dead_letter_studies", ())] == 0
    info = [k for k in m if k[0] == "cxr_model_info"]
    assert info and dict(info[0][1])["name"] == "cxr-triage-default"
    # Step durations: the database counts the histogram buckets.
    from sqlalchemy.orm import Session

    from worker.db.models import StepTiming

    study_id = rows(node.engine, Study, Study.study_instance_uid == pa.StudyInstanceUID)[0].id
    with Session(node.engine) as s, s.begin():
        for seconds in (0.02, 0.3, 4.0):
            s.add(StepTiming(study_id=study_id, revision=1, step="predict", seconds=seconds))
    m = _samples(port)
    bucket = "cxr_step_duration_seconds_bucket"
    assert m[(bucket, (("le", "0.025"), ("step", "predict")))] == 1
    assert m[(bucket, (("le", "0.5"), ("step", "predict")))] == 2
    assert m[(bucket, (("le", "+Inf"), ("step", "predict")))] == 3
    assert m[("cxr_step_duration_seconds_sum", (("step", "predict"),))] == 4.32
    # Rejections show up too.
    send(node, [factories.radiograph()], called_ae="WRONG_AE")
    assert _samples(port)[("cxr_rejections_total", (("kind", "association"),))] == 1


def test_health_and_readiness(start_node, redis_server) -> None:
    port = free_port()
    node = start_node(metrics_port=port, broker_url=redis_server.url)
    assert _get(port, "/healthz")[0] == 200
    status, body = _get(port, "/readyz")
    assert status == 200 and json.loads(body)["checks"] == {
        "database": "ok",
        "broker": "ok",
        "spool": "ok",
    }
    node.settings.storage.min_free_mb = 10**9
    status, body = _get(port, "/readyz")
    report: dict[str, Any] = json.loads(body)
    assert status == 503 and "watermark" in report["checks"]["spool"]
    node.settings.storage.min_free_mb = 0
    redis_server.stop()
    status, body = _get(port, "/readyz")
    assert status == 503 and json.loads(body)["checks"]["broker"] != "ok"
    assert _get(port, "/nothing")[0] == 404
