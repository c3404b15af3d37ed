"""Database side of the DICOM node: the recorder and study tracker the listener calls."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    case,
    distinct,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.completion import CompletionPolicy
from dicom_node.interfaces import PeerInfo, ReceivedInstance, RecordRefusedError
from worker.db.models import (
    COMPLETE,
    DELIVERING,
    PROCESSING,
    QUEUED,
    QUEUEING,
    RECEIVING,
    SKIPPED,
    Association,
    Delivery,
    Instance,
    ProducedObject,
    Receipt,
    Rejection,
    Study,
    StudyState,
    WorkerHeartbeat,
)
from worker.db.transitions import created, move
from worker.pids import pid_alive

logger = logging.getLogger(__name__)

_INSTANCES = cast(Table, Instance.__table__)
_RECEIPTS = cast(Table, Receipt.__table__)
_STUDIES = cast(Table, Study.__table__)
# The statements of every C-STORE, built once (building them cost as much as running them).
_FIND_INSTANCE = select(_INSTANCES.c.id).where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
_FIND_STUDY = (
    select(_STUDIES.c.id, _STUDIES.c.state)
    .where(_STUDIES.c.study_instance_uid == bindparam("uid"))
    .with_for_update()
)
_TOUCH_STUDY = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("study"))
    .values(last_instance_at=bindparam("at"))
)
_ADD_INSTANCE = insert(_INSTANCES)
_UPDATE_INSTANCE = update(_INSTANCES).where(_INSTANCES.c.id == bindparam("row"))
_ADD_RECEIPT = insert(_RECEIPTS)

# The monitor's statements, built once: it runs them every second.
_RECEIVING_STUDIES = (
    select(
        Study.id,
        Study.first_instance_at,
        Study.last_instance_at,
        func.count(distinct(case((Association.ended_at.is_(None), Association.id)))),
        func.sum(case((Instance.eligible, 1), else_=0)),
    )
    .join(Instance, Instance.study_id == Study.id)
    .join(Association, Association.id == Instance.association_id)
    .where(Study.state == RECEIVING)
    .group_by(Study.id, Study.first_instance_at, Study.last_instance_at)
)
_STALE_CLAIMS = select(Study.id).where(
    Study.state == QUEUEING, Study.updated_at < bindparam("cutoff")
)
_COMPLETE_STUDIES = (
    select(Study.id).where(Study.state == COMPLETE).order_by(Study.id).limit(bindparam("limit"))
)

#: Enqueue a study; returns the task id. Raises when the broker cannot take it.
Enqueue = Callable[[Study], str]
#: Enqueue one delivery attempt: (object id, destination, attempt number).
Redeliver = Callable[[int, str, int], None]

# A study left in "queueing" this long was claimed by a process that died mid-dispatch.
_QUEUEING_STALE = timedelta(seconds=60)
# Longest wait between attempts to reach a broker that is down, in seconds.
_MAX_BACKOFF = 30.0


def _text(value: str, limit: int | None = None) -> str:
    """Peer-supplied text as the database can store it (no NUL or other control bytes)."""
    cleaned = "".join(c if c >= " " or c in "\t\n" else "?" for c in value)
    return cleaned[:limit] if limit else cleaned


def _permanent(exc: StatementError) -> bool:
    """Errors a retry of the same values cannot cure (too long, NUL byte, bad number)."""
    return isinstance(exc, DataError) or isinstance(exc.orig, ValueError)


def _add_receipt(conn: Connection, instance_id: int, rec: ReceivedInstance, now: datetime) -> None:
    conn.execute(
        _ADD_RECEIPT,
        {
            "instance_id": instance_id,
            "association_id": rec.association_id,
            "received_at": now,
            "size_bytes": rec.size_bytes,
            "duplicate": rec.duplicate,
        },
    )


def node_name() -> str:
    """``host:pid`` of this process, stored on every association it accepts."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _now() -> datetime:
    return datetime.now(UTC)


class NodeStore:
    """Implements :class:`~dicom_node.interfaces.NodeRecorder` and ``StudyTracker``.

    Parameters
    ----------
    sessions : sessionmaker
        Session factory bound to the application's database.
    policy : CompletionPolicy
        Quiet period and force-complete cap.
    enqueue : callable, optional
        Puts a complete study on the broker; without one, complete studies wait in the outbox.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: CompletionPolicy,
        enqueue: Enqueue | None = None,
        redeliver: Redeliver | None = None,
        lease: float = 45.0,
        retry_delay: Callable[[int], float] = lambda attempt: 0.0,
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.enqueue = enqueue
        self.redeliver = redeliver
        self.lease = timedelta(seconds=lease)
        self.retry_delay = retry_delay  # seconds a failed attempt waits before the next
        self._next_sweep = 0.0
        self.node = node_name()
        # Back off while the broker is down instead of retrying (and logging) every pass.
        self._broker_failures = 0
        self._retry_at = 0.0

    # -- NodeRecorder ---------------------------------------------------------------------------
    def association_started(self, peer: PeerInfo) -> int:
        with self.sessions.begin() as s:
            row = Association(
                calling_ae=_text(peer.calling_ae, 16),
                called_ae=_text(peer.called_ae, 16),
                peer_host=_text(peer.host, 255),
                peer_port=peer.port,
                tls=peer.tls,
                node=self.node,
                started_at=_now(),
            )
            s.add(row)
            s.flush()
            return row.id

    def association_ended(self, association_id: int, outcome: str) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(Association)
                .where(Association.id == association_id, Association.ended_at.is_(None))
                .values(ended_at=_now(), outcome=outcome)
            )

    def association_rejected(self, peer: PeerInfo, reason: str) -> None:
        with self.sessions.begin() as s:
            s.add(
                Rejection(
                    at=_now(),
                    kind="association",
                    calling_ae=_text(peer.calling_ae, 16),
                    called_ae=_text(peer.called_ae, 16),
                    peer_host=_text(peer.host, 255),
                    peer_port=peer.port,
                    reason=_text(reason),
                )
            )

    def instance_failed(
        self, association_id: int | None, sop_instance_uid: str, status: int, reason: str
    ) -> None:
        with self.sessions.begin() as s:
            s.add(
                Rejection(
                    at=_now(),
                    kind="instance",
                    association_id=association_id,
                    sop_instance_uid=_text(sop_instance_uid, 64) or None,
                    status=status,
                    reason=_text(reason),
                )
            )

    def instance_received(self, instance: ReceivedInstance) -> None:
        # Two associations may create the same new study at once: the loser retries once and
        # then finds the winner's row.
        for attempt in (1, 2):
            try:
                with self.sessions.begin() as s:
                    self._record_instance(s, instance)
                return
            except StatementError as exc:
                if isinstance(exc, IntegrityError) and attempt == 1:
                    logger.debug(
                        "concurrent insert for study %s; retrying", instance.study_instance_uid
                    )
                    continue
                if _permanent(exc):
                    raise RecordRefusedError(type(exc.orig or exc).__name__) from exc
                raise

    def _record_instance(self, s: Session, rec: ReceivedInstance) -> None:
        # Core statements on the session's connection, not ORM objects: this runs before every
        # C-STORE is acknowledged, and the unit of work cost more than the SQL itself.
        now = _now()
        conn = s.connection()
        row_id = conn.scalar(_FIND_INSTANCE, {"uid": rec.sop_instance_uid})
        if row_id is not None and rec.duplicate:
            # The same bytes again (a PACS re-route, a manual resend): note who sent it, and
            # change nothing else, so no new revision and no second set of results.
            _add_receipt(conn, row_id, rec, now)
            return
        found = conn.execute(_FIND_STUDY, {"uid": rec.study_instance_uid}).one_or_none()
        if found is None:
            study = Study(
                study_instance_uid=rec.study_instance_uid,
                accession_number=rec.accession_number[:16],
                patient_id=rec.patient_id[:64],
                state=RECEIVING,
                first_instance_at=now,
                last_instance_at=now,
            )
            s.add(study)
            s.flush()
            created(s, study, "first instance")
            study_id = study.id
        else:
            study_id, state = found
            if state == RECEIVING:
                conn.execute(_TOUCH_STUDY, {"study": study_id, "at": now})
            elif rec.decision.eligible:
                # New images for a study already handled: process it again as a new revision.
                move(
                    s,
                    study_id,
                    RECEIVING,
                    f"reopened by new eligible instance {rec.sop_instance_uid}",
                    at=now,
                    revision=Study.revision + 1,
                    first_instance_at=now,
                    last_instance_at=now,
                    completed_at=None,
                    queued_at=None,
                    completion=None,
                    task_id=None,
                )
            # else: an ineligible instance (e.g. our own output forwarded back) never reopens a
            # study.

        values = {
            "study_id": study_id,
            "series_instance_uid": rec.series_instance_uid,
            "sop_class_uid": rec.sop_class_uid,
            "transfer_syntax_uid": rec.transfer_syntax_uid,
            "modality": rec.modality[:16],
            "accession_number": rec.accession_number[:16],
            "spool_path": rec.spool_path,
            "size_bytes": rec.size_bytes,
            "eligible": rec.decision.eligible,
            "rule": rec.decision.rule,
            "reason": rec.decision.reason,
        }
        if row_id is None:
            # received_at and association_id name the first arrival; receipts hold every one.
            inserted = conn.execute(
                _ADD_INSTANCE,
                {
                    "sop_instance_uid": rec.sop_instance_uid,
                    "received_at": now,
                    "association_id": rec.association_id,
                    **values,
                },
            )
            key = inserted.inserted_primary_key
            assert key is not None  # an INSERT of one row
            row_id = key[0]
        else:
            conn.execute(_UPDATE_INSTANCE, {"row": row_id, **values})
        _add_receipt(conn, row_id, rec, now)

    # -- start-up -------------------------------------------------------------------------------
    def close_orphaned_associations(self) -> int:
        """Mark associations of dead listener processes on this host as ``interrupted``.

        After a crash their rows stay open and would hold their studies back until the
        force-complete cap; a restarted node closes them so those studies complete normally.
        """
        host = socket.gethostname()
        closed = 0
        with self.sessions.begin() as s:
            rows = s.scalars(
                select(Association).where(
                    Association.ended_at.is_(None), Association.node.like(f"{host}:%")
                )
            ).all()
            for row in rows:
                pid = int(row.node.rsplit(":", 1)[1])
                if pid != os.getpid() and pid_alive(pid):
                    continue
                row.ended_at = _now()
                row.outcome = "interrupted"
                closed += 1
        if closed:
            logger.warning("closed %d association(s) left open by a stopped listener", closed)
        return closed

    # -- StudyTracker ---------------------------------------------------------------------------
    def complete_due_studies(self) -> int:
        now = _now()
        done = 0
        with self.sessions() as s:
            rows = s.execute(_RECEIVING_STUDIES).all()
        for study_id, first, last, n_open, n_eligible in rows:
            verdict = self.policy.verdict(
                open_associations=int(n_open),
                first_received=first,
                last_received=last,
                now=now,
            )
            if verdict is None:
                continue
            to_state = COMPLETE if n_eligible else SKIPPED
            detail = (
                f"{verdict}: {n_eligible} eligible instance(s)"
                if n_eligible
                else f"{verdict}: no eligible instance"
            )
            with self.sessions.begin() as s:
                # Only if nothing arrived since we looked (last_instance_at unchanged).
                if move(
                    s,
                    study_id,
                    to_state,
                    detail,
                    expect=[RECEIVING],
                    where=[Study.last_instance_at == last],
                    at=now,
                    completed_at=now,
                    completion=verdict,
                ):
                    done += 1
        return done

    def _release_stale_claims(self) -> None:
        cutoff = _now() - _QUEUEING_STALE
        with self.sessions.begin() as s:
            stale = s.scalars(_STALE_CLAIMS, {"cutoff": cutoff}).all()
            for study_id in stale:
                move(
                    s,
                    study_id,
                    COMPLETE,
                    "claim released: the process queueing it stopped",
                    expect=[QUEUEING],
                    where=[Study.updated_at < cutoff],
                )

    def dispatch_complete_studies(self, limit: int = 100) -> int:
        """The outbox: queue complete studies, each exactly once.

        A study is claimed (``complete`` -> ``queueing``) with a conditional update, so that of
        several listener processes only one sends it; it becomes ``queued`` once the broker has
        it. If the broker is down the claim is released and the study waits, still ``complete``,
        for the next pass. The task id is deterministic (``study-<id>-r<revision>``) so that the
        consumer can discard the duplicate left by a crash between sending and recording.
        """
        if self.enqueue is None or time.monotonic() < self._retry_at:
            return 0
        self._release_stale_claims()
        with self.sessions() as s:
            ids = s.scalars(_COMPLETE_STUDIES, {"limit": limit}).all()
        queued = 0
        for study_id in ids:
            with self.sessions.begin() as s:
                claimed = move(s, study_id, QUEUEING, "claimed for queueing", expect=[COMPLETE])
            if not claimed:
                continue
            with self.sessions() as s:
                study = s.get_one(Study, study_id)
            try:
                task_id = self.enqueue(study)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:2000]
                with self.sessions.begin() as s:
                    move(
                        s,
                        study_id,
                        COMPLETE,
                        f"broker unavailable: {error}",
                        expect=[QUEUEING],
                        queue_attempts=Study.queue_attempts + 1,
                        last_queue_error=error,
                    )
                self._broker_failures += 1
                delay = min(_MAX_BACKOFF, 0.5 * 2 ** (self._broker_failures - 1))
                self._retry_at = time.monotonic() + delay
                logger.warning(
                    "broker unavailable, study %s stays in the outbox (retry in %.1f s): %s",
                    study.study_instance_uid,
                    delay,
                    exc,
                )
                break  # the broker is down: try the rest later
            now = _now()
            queued_values: dict[str, Any] = {
                "queued_at": now,
                "task_id": task_id,
                "queue_attempts": Study.queue_attempts + 1,
                "last_queue_error": None,
            }
            with self.sessions.begin() as s:
                if not move(
                    s, study_id, QUEUED, f"task {task_id}", expect=[QUEUEING], **queued_values
                ):
                    # A worker took the task before we could record it: keep the state.
                    s.execute(update(Study).where(Study.id == study_id).values(**queued_values))
            queued += 1
            self._broker_failures = 0
            logger.info(
                "queued study %s as %s",
                study.study_instance_uid,
                task_id,
                extra={"study": study.study_instance_uid},
            )
        return queued

    # -- the sweeper ------------------------------------------------------------------------------
    def sweep_stuck_studies(self, *, queued_now: bool = False) -> int:
        """Take over work whose lease ran out, and send again tasks the broker lost.

        - ``processing`` whose lease ran out (its worker died or hangs): the study task again.
        - ``delivering``: an attempt in flight whose lease ran out, a retry overdue by a lease
          (its task was lost), or a planned first attempt of a study nobody holds: sent again.
        - ``queued`` for a lease, while workers are alive and have been idle for a lease (so
          the broker has no task left to give them: it lost them, e.g. Redis restarted empty);
          ``queued_now`` sends them regardless (``cxr-triage replay --stuck``).

        Live leases are never taken over, however long their work takes. Tasks go out again
        with their deterministic ids and the same result UIDs, so a duplicate is harmless.
        Runs at most once every third of a lease.
        """
        if self.enqueue is None or time.monotonic() < self._next_sweep:
            return 0
        self._next_sweep = time.monotonic() + self.lease.total_seconds() / 3
        now = _now()
        expired = or_(Study.lease_until.is_(None), Study.lease_until < now)
        with self.sessions() as s:
            dead = s.scalars(select(Study.id).where(Study.state == PROCESSING, expired)).all()
            delivering = s.scalars(
                select(Study.id).where(
                    Study.state == DELIVERING, or_(Study.lease_owner.is_(None), expired)
                )
            ).all()
            lost: list[int] = []
            if queued_now or self._workers_idle(s, now):
                lost = list(
                    s.scalars(
                        select(Study.id).where(
                            Study.state == QUEUED, Study.updated_at < now - self.lease
                        )
                    ).all()
                )
        sent = 0
        try:
            for study_id in dead:
                sent += self._requeue(study_id, PROCESSING, now)
            for study_id in lost:
                sent += self._requeue(study_id, QUEUED, now)
            for study_id in delivering:
                sent += self._redeliver(study_id, now)
        except Exception as exc:
            logger.warning("could not re-dispatch stuck work: %s", exc)  # the next sweep tries
        return sent

    def _workers_idle(self, s: Session, now: datetime) -> bool:
        """Workers are alive, and none has held a study for a lease."""
        alive = s.scalar(select(func.count()).where(WorkerHeartbeat.seen_at > now - self.lease))
        last_held = s.scalar(select(func.max(Study.lease_until)))
        return bool(alive) and (last_held is None or last_held <= now - self.lease)

    def _requeue(self, study_id: int, state: str, now: datetime) -> int:
        assert self.enqueue is not None
        with self.sessions() as s:
            study = s.get_one(Study, study_id)
        task_id = self.enqueue(study)
        if state == PROCESSING:
            detail = f"re-dispatched task {task_id}: the lease of {study.lease_owner} ran out"
            still = or_(Study.lease_until.is_(None), Study.lease_until < now)
        else:
            detail = f"re-dispatched task {task_id}: queued while the workers were idle"
            still = Study.updated_at < now - self.lease
        with self.sessions.begin() as s:
            moved = move(
                s,
                study_id,
                QUEUED,
                detail,
                expect=[StudyState(state)],
                where=[still],
                lease_owner=None,
            )
        if moved:
            logger.warning("study %s: %s", study.study_instance_uid, detail)
        return int(moved)

    def _redeliver(self, study_id: int, now: datetime) -> int:
        if self.redeliver is None:
            return 0
        with self.sessions() as s:
            revision = s.scalar(select(Study.revision).where(Study.id == study_id))
            last = (
                select(func.max(Delivery.id))
                .join(ProducedObject, ProducedObject.id == Delivery.object_id)
                .where(ProducedObject.study_id == study_id, ProducedObject.revision == revision)
                .group_by(Delivery.object_id, Delivery.destination)
            )
            latest = s.scalars(select(Delivery).where(Delivery.id.in_(last))).all()
            due = [d for d in latest if self._delivery_lost(d, now)]
            for d in due:
                self.redeliver(d.object_id, d.destination, d.attempt + 1)
                # Held by the sweeper for a lease: the task just sent gets a lease to start.
                s.execute(
                    update(Delivery)
                    .where(Delivery.id == d.id)
                    .values(lease_owner=f"sweeper {self.node}"[:64], lease_until=now + self.lease)
                )
            s.commit()
        if due:
            with self.sessions.begin() as s:
                move(
                    s,
                    study_id,
                    DELIVERING,
                    f"re-dispatched {len(due)} delivery attempt(s) whose lease ran out",
                    expect=[DELIVERING],
                )
        return len(due)

    def _delivery_lost(self, d: Delivery, now: datetime) -> bool:
        if d.lease_until is not None and d.lease_until >= now:
            return False  # in flight (renewed by its sender) or just re-dispatched
        if d.outcome in ("sending", "pending"):
            return True
        if d.outcome == "retry":
            delay = self.retry_delay(d.attempt)
            return d.at + timedelta(seconds=delay) + self.lease < now
        return False
