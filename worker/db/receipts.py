"""What the listener records: associations, instances and their receipts, refusals.

:class:`Receipts` implements :class:`dicom_node.interfaces.NodeRecorder`; the listener calls it
before it acknowledges each C-STORE, so its statements are built once and run as Core SQL.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime
from typing import cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.interfaces import PeerInfo, ReceivedInstance, RecordRefusedError
from worker.db.models import (
    RECEIVING,
    Association,
    Instance,
    Receipt,
    Rejection,
    Study,
    utcnow,
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


class Receipts:
    """Implements :class:`~dicom_node.interfaces.NodeRecorder` on the application's database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.node = node_name()

    def association_started(self, peer: PeerInfo) -> int:
        with self.sessions.begin() as s:
            row = Association(
                calling_ae=_text(peer.calling_ae, 16),
                called_ae=_text(peer.called_ae, 16),
                peer_host=_text(peer.host, 255),
                peer_port=peer.port,
                tls=peer.tls,
                node=self.node,
                started_at=utcnow(),
            )
            s.add(row)
            s.flush()
            return row.id

    def association_ended(self, association_id: int, outcome: str) -> None:
        with self.sessions.begin() as s:
            s.execute(
                update(Association)
                .where(Association.id == association_id, Association.ended_at.is_(None))
                .values(ended_at=utcnow(), outcome=outcome)
            )

    def association_rejected(self, peer: PeerInfo, reason: str) -> None:
        with self.sessions.begin() as s:
            s.add(
                Rejection(
                    at=utcnow(),
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
                    at=utcnow(),
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
        now = utcnow()
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
                row.ended_at = utcnow()
                row.outcome = "interrupted"
                closed += 1
        if closed:
            logger.warning("closed %d association(s) left open by a stopped listener", closed)
        return closed
