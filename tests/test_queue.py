"""Study completion and the queue outbox, with real Redis and a real Celery worker."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE

from dicom_node.completion import CompletionPolicy
from tests import factories
from tests.helpers import dest, in_process_worker, rows, send, wait_for
from worker.celery_app import create_celery
from worker.db.engine import make_engine, make_session_factory
from worker.db.migrate import upgrade
from worker.db.models import COMPLETE, QUEUED, QUEUEING, RECEIVING, SKIPPED, Study, StudyEvent
from worker.db.outbox import Outbox


def _study(node: Any, uid: str) -> Study:
    (study,) = rows(node.engine, Study, Study.study_instance_uid == uid)
    return study


def _queued_messages(redis_server: Any, queue: str = "inference") -> list[dict[str, Any]]:
    raw = redis_server.client().lrange(queue, 0, -1)
    return [json.loads(m) for m in raw]


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "open_assocs, since_first, since_last, expected",
    [
        (0, 10, 10, "complete"),
        (0, 10, 1, None),  # still within the quiet period
        (1, 10, 10, None),  # an association that delivered it is still open
        (1, 1000, 10, "forced"),
        (0, 1000, 0, "forced"),
    ],
)
def test_policy(open_assocs: int, since_first: float, since_last: float, expected: str) -> None:
    policy = CompletionPolicy(quiet_seconds=5, max_wait_seconds=900)
    now = T0 + timedelta(seconds=since_first)
    verdict = policy.verdict(
        open_associations=open_assocs,
        first_received=T0,
        last_received=now - timedelta(seconds=since_last),
        now=now,
    )
    assert verdict == expected


@pytest.mark.parametrize(
    "open_assocs, last, expected",
    [
        (0, 3, 8),  # the quiet period after the last instance
        (1, 3, 900),  # open: only the force-complete cap is certain
        (0, 899, 900),  # the cap comes before the quiet period ends
    ],
)
def test_policy_says_when_a_study_falls_due(open_assocs: int, last: float, expected: float) -> None:
    policy = CompletionPolicy(quiet_seconds=5, max_wait_seconds=900)
    kwargs: dict[str, Any] = {
        "open_associations": open_assocs,
        "first_received": T0,
        "last_received": T0 + timedelta(seconds=last),
    }
    due = policy.due_at(**kwargs)
    assert due == T0 + timedelta(seconds=expected)
    assert policy.verdict(**kwargs, now=due) is not None
    assert policy.verdict(**kwargs, now=due - timedelta(milliseconds=1)) is None


def test_the_monitor_sleeps_until_a_study_falls_due(start_node, redis_server) -> None:
    """Not until its next interval: the quiet period is all a study waits for."""
    node = start_node(broker_url=redis_server.url, quiet_seconds=3, monitor_interval=60)
    ds = factories.radiograph()
    assert send(node, [ds]).results[0].ok
    wait_for(lambda: _study(node, ds.StudyInstanceUID).state == RECEIVING)
    monitor = node.monitor
    due = _study(node, ds.StudyInstanceUID).last_instance_at + timedelta(seconds=3)
    # Once the node has recorded the association's end (until then only the cap is certain);
    # nothing completes: still within the quiet period.
    wait_for(lambda: monitor.completion.complete_due() == 0 and monitor.completion.next_due == due)
    assert 0 < monitor.pause() <= 3.005


def test_the_embedded_broker_is_polled_ten_times_a_second(tmp_path: Path) -> None:
    from worker.celery_app import EMBEDDED_POLL
    from worker.settings import load_settings

    app = create_celery(load_settings(data_dir=tmp_path))
    with app.connection_for_read() as conn:
        assert conn.transport.polling_interval == EMBEDDED_POLL == 0.1


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        CompletionPolicy(quiet_seconds=-1)


def test_complete_study_reaches_a_real_celery_worker(start_node, redis_server) -> None:
    node = start_node(broker_url=redis_server.url)
    app = create_celery(node.settings)
    received: list[dict[str, Any]] = []

    @app.task(name=node.settings.queue.study_task, shared=False)
    def probe(**kwargs: Any) -> None:
        received.append(kwargs)

    study_uid = "1.2.826.0.1.3680043.8.498.1001"
    images = [factories.radiograph(study_uid=study_uid) for _ in range(2)]
    ct = factories.ct_slice()
    with in_process_worker(app, node.settings.queue.inference_queue, shutdown_timeout=10):
        assert all(r.ok for r in send(node, [*images, ct]).results)
        wait_for(lambda: received, timeout=30)
        wait_for(lambda: _study(node, ct.StudyInstanceUID).state == SKIPPED)
    study = _study(node, study_uid)
    assert received == [{"study_id": study.id, "study_instance_uid": study_uid, "revision": 1}]
    assert study.state == QUEUED and study.task_id == f"study-{study.id}-r1"
    assert study.completion == "complete" and study.queue_attempts == 1
    events = [
        (e.from_state, e.to_state)
        for e in rows(node.engine, StudyEvent, StudyEvent.study_id == study.id)
    ]
    assert events == [
        (None, RECEIVING),
        (RECEIVING, COMPLETE),
        (COMPLETE, QUEUEING),
        (QUEUEING, QUEUED),
    ]


def test_study_waits_for_its_association_then_forced(start_node, redis_server) -> None:
    node = start_node(broker_url=redis_server.url, quiet_seconds=0.2, max_wait_seconds=2.0)
    ds = factories.radiograph()
    ae = AE(ae_title="SLOW_SCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    target = dest(node)
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    try:
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0
        # Well past the quiet period, the association is open: still receiving.
        with pytest.raises(TimeoutError):
            wait_for(lambda: _study(node, ds.StudyInstanceUID).state != RECEIVING, timeout=1.0)
        # The force-complete cap ends the wait even though the association stays open.
        wait_for(lambda: _study(node, ds.StudyInstanceUID).state == QUEUED, timeout=10)
    finally:
        assoc.release()
    assert _study(node, ds.StudyInstanceUID).completion == "forced"


def test_broker_down_then_up_queues_exactly_once(start_node, redis_server) -> None:
    node = start_node(broker_url=redis_server.url)
    redis_server.stop()
    ds = factories.radiograph()
    assert send(node, [ds]).results[0].ok  # receiving does not need the broker
    study = wait_for(lambda: (s := _study(node, ds.StudyInstanceUID)).queue_attempts >= 2 and s)
    assert study.state == COMPLETE and study.last_queue_error
    redis_server.start()  # same port
    wait_for(lambda: _study(node, ds.StudyInstanceUID).state == QUEUED, timeout=30)
    # Several more monitor passes must not queue it again.
    with pytest.raises(TimeoutError):
        wait_for(lambda: len(_queued_messages(redis_server)) > 1, timeout=1.5)
    (message,) = _queued_messages(redis_server)
    study = _study(node, ds.StudyInstanceUID)
    assert message["headers"]["id"] == study.task_id
    assert message["headers"]["task"] == "cxr_triage.process_study"
    assert study.last_queue_error is None


def test_new_eligible_instance_reopens_a_queued_study(start_node, redis_server) -> None:
    node = start_node(broker_url=redis_server.url)
    study_uid = "1.2.826.0.1.3680043.8.498.2002"
    send(node, [factories.radiograph(study_uid=study_uid)])
    wait_for(lambda: _study(node, study_uid).state == QUEUED)
    # Our own output forwarded back does not reopen it ...
    send(node, [factories.radiograph(study_uid=study_uid, Manufacturer="cxr-triage")])
    # ... but a new PA image does, as revision 2.
    send(node, [factories.radiograph(study_uid=study_uid)])
    wait_for(
        lambda: _study(node, study_uid).revision == 2 and _study(node, study_uid).state == QUEUED
    )
    ids = [m["headers"]["id"] for m in _queued_messages(redis_server)]
    sid = _study(node, study_uid).id
    assert sorted(ids) == [f"study-{sid}-r1", f"study-{sid}-r2"]


def test_concurrent_dispatchers_queue_each_study_once(db_url: str) -> None:
    """Several listener processes share a database: the claim lets only one send a study."""
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    sent: list[str] = []
    lock = threading.Lock()

    def enqueue(study: Study) -> str:
        with lock:
            sent.append(study.study_instance_uid)
        return f"study-{study.id}-r{study.revision}"

    with sessions.begin() as s:
        for i in range(30):
            s.add(Study(study_instance_uid=f"1.2.3.{i}", state=COMPLETE))
    outboxes = [Outbox(sessions, enqueue) for _ in range(4)]
    threads = [threading.Thread(target=o.dispatch) for o in outboxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(sent) == sorted(f"1.2.3.{i}" for i in range(30))
    with sessions() as s:
        assert {st.state for st in s.query(Study)} == {QUEUED}
    engine.dispose()


@pytest.mark.slow
def test_study_lost_by_the_broker_is_sent_again_by_the_sweeper(start_node, redis_server) -> None:
    """Redis restarted without persistence: the queued study's message is gone."""
    from worker.leases import renew

    node = start_node(broker_url=redis_server.url, stuck_after=3.0, delivery_backoff=0.1)
    sessions = make_session_factory(node.engine)
    ds = factories.radiograph()
    assert send(node, [ds]).results[0].ok
    wait_for(lambda: len(_queued_messages(redis_server)) == 1, timeout=30)
    redis_server.stop()
    redis_server.start()  # a Redis that kept nothing
    assert _queued_messages(redis_server) == []

    def idle_worker_sees_it_again() -> list[dict[str, Any]]:
        renew(sessions, 3.0)  # a worker is alive, holding nothing: the broker gives it nothing
        return _queued_messages(redis_server)

    (message,) = wait_for(idle_worker_sees_it_again, timeout=30)
    study = _study(node, ds.StudyInstanceUID)
    assert message["headers"]["id"] == study.task_id == f"study-{study.id}-r1"  # same task id
    assert study.state == QUEUED
    events = rows(node.engine, StudyEvent, StudyEvent.study_id == study.id)
    assert any(e.from_state == QUEUED and "re-dispatched" in e.detail for e in events)
    # Sent once per stuck period, not on every monitor pass.
    with pytest.raises(TimeoutError):
        wait_for(lambda: len(_queued_messages(redis_server)) > 1, timeout=1.0)


def test_identical_resend_changes_nothing_and_every_sender_is_kept(
    start_node, redis_server
) -> None:
    """A PACS re-route of the same bytes after the study was queued: no revision 2."""
    from worker.db.models import Instance, Receipt

    node = start_node(broker_url=redis_server.url)
    ds = factories.radiograph()
    send(node, [ds], calling_ae="MODALITY")
    wait_for(lambda: _study(node, ds.StudyInstanceUID).state == QUEUED)
    first = rows(node.engine, Instance)[0]
    assert send(node, [ds], calling_ae="ORTHANC").results[0].ok
    study = _study(node, ds.StudyInstanceUID)
    assert study.revision == 1 and study.state == QUEUED
    assert len(_queued_messages(redis_server)) == 1
    (inst,) = rows(node.engine, Instance)
    assert inst.received_at == first.received_at and inst.association_id == first.association_id
    receipts = rows(node.engine, Receipt)
    assert [r.duplicate for r in sorted(receipts, key=lambda r: r.id)] == [False, True]
    # Audit finds the study by either sender.
    from worker.audit import StudyFilter, list_studies
    from worker.db.engine import make_session_factory

    with make_session_factory(node.engine)() as s:
        for ae in ("MODALITY", "ORTHANC"):
            found = list_studies(s, StudyFilter(calling_ae=ae))
            assert [r["study_instance_uid"] for r in found] == [ds.StudyInstanceUID]
    # Changed content under the same SOP Instance UID is a new revision, as before.
    ds.InstitutionName = "Changed"
    send(node, [ds])
    wait_for(lambda: _study(node, ds.StudyInstanceUID).revision == 2)


def test_a_resend_in_another_encoding_is_a_duplicate_and_a_new_pixel_a_revision(
    start_node, redis_server
) -> None:
    """Transcoded, or with a PACS's private tag added: the same content, so no revision 2."""
    import copy

    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    from worker.db.models import Receipt

    node = start_node(broker_url=redis_server.url)
    ds = factories.radiograph(rows=64, columns=64, bits=16)
    send(node, [ds], calling_ae="MODALITY")
    wait_for(lambda: _study(node, ds.StudyInstanceUID).state == QUEUED)
    implicit = copy.deepcopy(ds)
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.private_block(0x0029, "ORTHANC ROUTER", create=True).add_new(0x01, "LO", "hop 2")
    rle = copy.deepcopy(ds)
    rle.compress(RLELossless, generate_instance_uid=False)
    for resend in (implicit, rle):
        assert send(node, [resend], calling_ae="PACS").results[0].ok
    study = _study(node, ds.StudyInstanceUID)
    assert study.revision == 1 and study.state == QUEUED
    assert len(_queued_messages(redis_server)) == 1
    receipts = sorted(rows(node.engine, Receipt), key=lambda r: r.id)
    assert [r.duplicate for r in receipts] == [False, True, True]
    # One pixel changed, in any encoding, is new content: a new revision.
    changed = copy.deepcopy(implicit)
    pixels = changed.pixel_array.copy()
    pixels[10, 10] ^= 1
    changed.PixelData = pixels.tobytes()
    send(node, [changed])
    wait_for(lambda: _study(node, ds.StudyInstanceUID).revision == 2)


def test_replay_stuck_sends_a_lost_study_again_now(start_node, redis_server) -> None:
    import subprocess
    import sys

    node = start_node(broker_url=redis_server.url)  # the sweeper waits 30 minutes
    ds = factories.radiograph()
    assert send(node, [ds]).results[0].ok
    wait_for(lambda: len(_queued_messages(redis_server)) == 1, timeout=30)
    redis_server.stop()
    redis_server.start()
    env = {
        "CXR_DATA_DIR": str(node.settings.storage.data_dir),
        "CXR_BROKER_URL": redis_server.url,
        "PATH": "/usr/bin:/bin",
    }
    cli = [sys.executable, "-m", "worker.cli.main", "replay", "--stuck", "0"]
    listed = subprocess.run([*cli, "--list"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and ds.StudyInstanceUID in listed.stdout
    assert _queued_messages(redis_server) == []
    sent = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert "sent again: 1 task(s)" in sent.stdout
    (message,) = _queued_messages(redis_server)
    assert message["headers"]["id"] == _study(node, ds.StudyInstanceUID).task_id


def _declare_at_once(barrier: Any, data_dir: str, results: Any) -> None:
    """A process like the listener or a worker starting up: declare the inference queue."""
    from worker.celery_app import declare_queues
    from worker.settings import load_settings

    app = create_celery(load_settings(data_dir=Path(data_dir)))
    barrier.wait(60)
    try:
        declare_queues(app, ["inference"])
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_processes_starting_together_each_declare_the_embedded_queue(tmp_path: Path) -> None:
    """Without declare_queues' second try one of them gets IntegrityError (and a worker stopped)."""
    import multiprocessing

    from worker.celery_app import declare_queues
    from worker.settings import load_settings

    ctx = multiprocessing.get_context("spawn")  # a clean interpreter, like a started process
    for trial in range(4):
        data = tmp_path / f"data{trial}"
        # The broker's tables exist (a node that ran before); only the queue's row is new.
        declare_queues(create_celery(load_settings(data_dir=data)), ["another"])
        barrier = ctx.Barrier(4)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_declare_at_once, args=(barrier, str(data), results))
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        try:
            got = [results.get(timeout=90) for _ in procs]
        finally:
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
        assert got == ["ok"] * 4, (trial, got)
