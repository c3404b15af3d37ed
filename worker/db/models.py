"""SQLAlchemy 2 tables. Every change here needs a new Alembic migration in ``migrations/``."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps, also on SQLite (which stores them without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StudyState(StrEnum):
    """Every state a study can be in; :data:`TRANSITIONS` says which moves are allowed.

    receiving -> complete -> queueing -> queued -> processing -> delivering -> done, with
    skipped (nothing eligible), failed (the pipeline raised) and dead_letter (a delivery gave
    up) as the other ends. New eligible images reopen a study (-> receiving, revision + 1).
    Moves are made only by :func:`worker.db.transitions.move`, which records a ``StudyEvent``.
    """

    RECEIVING = "receiving"
    COMPLETE = "complete"
    QUEUEING = "queueing"
    QUEUED = "queued"
    PROCESSING = "processing"
    DELIVERING = "delivering"
    DONE = "done"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        """No work is pending: only new images (or ``replay``) move it again."""
        return self in (StudyState.DONE, StudyState.SKIPPED, StudyState.DEAD_LETTER)


_S = StudyState
TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    _S.RECEIVING: frozenset({_S.COMPLETE, _S.SKIPPED}),
    # The pipeline may claim a study whose queueing it overtook (the broker was faster).
    _S.COMPLETE: frozenset({_S.QUEUEING, _S.PROCESSING, _S.RECEIVING}),
    _S.QUEUEING: frozenset({_S.QUEUED, _S.COMPLETE, _S.PROCESSING, _S.RECEIVING}),
    # queued -> queued: the sweeper sent the lost task again.
    _S.QUEUED: frozenset({_S.QUEUED, _S.PROCESSING, _S.RECEIVING}),
    # processing -> processing: a task redelivered after its worker died takes it over.
    _S.PROCESSING: frozenset(
        {_S.PROCESSING, _S.DELIVERING, _S.DONE, _S.FAILED, _S.SKIPPED, _S.QUEUED, _S.RECEIVING}
    ),
    _S.DELIVERING: frozenset({_S.DELIVERING, _S.DONE, _S.DEAD_LETTER, _S.RECEIVING}),
    _S.FAILED: frozenset({_S.PROCESSING, _S.QUEUED, _S.RECEIVING}),
    _S.DEAD_LETTER: frozenset({_S.DELIVERING, _S.DONE, _S.RECEIVING}),
    _S.DONE: frozenset({_S.RECEIVING}),
    _S.SKIPPED: frozenset({_S.RECEIVING}),
}

# Names kept for the modules that compare states.
RECEIVING = StudyState.RECEIVING
COMPLETE = StudyState.COMPLETE
QUEUEING = StudyState.QUEUEING
QUEUED = StudyState.QUEUED
PROCESSING = StudyState.PROCESSING
DELIVERING = StudyState.DELIVERING
DONE = StudyState.DONE
FAILED = StudyState.FAILED
DEAD_LETTER = StudyState.DEAD_LETTER
SKIPPED = StudyState.SKIPPED
STUDY_STATES = tuple(StudyState)


class Association(Base):
    """One DICOM association accepted by the node."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(255))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    node: Mapped[str] = mapped_column(String(255), doc="host:pid of the listener process")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="open")


class Study(Base):
    """A study seen by the node, with its completion and queueing state."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    state: Mapped[str] = mapped_column(String(16), default=RECEIVING, index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    first_instance_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completion: Mapped[str | None] = mapped_column(String(16), doc="complete or forced")
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    task_id: Mapped[str | None] = mapped_column(String(64))
    queue_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_queue_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The worker process processing or delivering it (worker.leases): it renews lease_until
    # while it works; when it lets go, lease_owner is cleared and lease_until says when.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)

    instances: Mapped[list[Instance]] = relationship(back_populates="study")
    events: Mapped[list[StudyEvent]] = relationship(
        back_populates="study", order_by="StudyEvent.id"
    )


class StudyEvent(Base):
    """Each state transition of a study, for the audit timeline."""

    __tablename__ = "study_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")

    study: Mapped[Study] = relationship(back_populates="events")


class Instance(Base):
    """One received SOP instance and the eligibility decision taken on it."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    spool_path: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, doc="first arrival (every arrival: receipts)"
    )
    association_id: Mapped[int] = mapped_column(
        ForeignKey("associations.id"), index=True, doc="the association of the first arrival"
    )
    eligible: Mapped[bool] = mapped_column(Boolean)
    rule: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="instances")
    association: Mapped[Association] = relationship()


class Receipt(Base):
    """Every time an instance arrived: who sent it, when, and whether it was a copy we held.

    ``instances`` keeps the first arrival; a resend of the same bytes is a receipt with
    ``duplicate`` set and changes nothing downstream.
    """

    __tablename__ = "receipts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    association_id: Mapped[int] = mapped_column(ForeignKey("associations.id"), index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    duplicate: Mapped[bool] = mapped_column(Boolean, default=False)


class Rejection(Base):
    """A refused association or TLS handshake, or an instance answered with a failure status."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16), doc="association or instance")
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    called_ae: Mapped[str] = mapped_column(String(16), default="")
    peer_host: Mapped[str] = mapped_column(String(255), default="")
    peer_port: Mapped[int] = mapped_column(Integer, default=0)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id"))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)


class StudyResult(Base):
    """The study-level decision for one revision of a study."""

    __tablename__ = "study_results"
    __table_args__ = (UniqueConstraint("study_id", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str] = mapped_column(String(16), index=True)
    thresholds: Mapped[dict[str, float]] = mapped_column(JSON)
    # flagged / indeterminate / not flagged ("" for results before revision 0005).
    band: Mapped[str] = mapped_column(String(16), server_default="")
    # Where the thresholds came from (worker.decision.OperatingPoint.source), "shadow" marked.
    operating_point: Mapped[str] = mapped_column(String(200), server_default="settings")
    # Some image beyond the model's familiarity limit (None: the model has no such index).
    low_confidence: Mapped[bool | None] = mapped_column(Boolean)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32), index=True)
    weights_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ImageResult(Base):
    """The classification of one eligible instance."""

    __tablename__ = "image_results"
    __table_args__ = (UniqueConstraint("instance_id", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"))
    revision: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(
        String(32), doc="the image's triage label, or 'refused' by the image check"
    )
    band: Mapped[str] = mapped_column(
        String(16), server_default="", doc="flagged / indeterminate / not flagged ('' refused)"
    )
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    novelty: Mapped[float | None] = mapped_column(
        Float, doc="distance to the model's training data over its limit (>1: low confidence)"
    )
    low_confidence: Mapped[bool | None] = mapped_column(
        Boolean, doc="beyond the familiarity limit (None: the model has no such index)"
    )
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    refusal: Mapped[str | None] = mapped_column(
        Text, doc="why the image check refused to classify the image (label 'refused')"
    )


#: ImageResult.label of an image the image check refused (colour, no plausible lungs).
REFUSED = "refused"


class ProducedObject(Base):
    """A DICOM object we created (Grad-CAM SC or SR), kept on disk for (re)delivery."""

    __tablename__ = "produced_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8), doc="sc or sr")
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    source_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(255), doc="relative to CXR_DATA_DIR/outputs")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """One attempt to C-STORE a produced object to one destination."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_id: Mapped[int] = mapped_column(ForeignKey("produced_objects.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(
        String(16),
        index=True,
        doc="pending (planned, attempt 0), sending (in flight), delivered, retry or dead",
    )
    error: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # While the attempt is in flight (outcome "sending"): who sends it, renewed while it does.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WorkerHeartbeat(Base):
    """A worker process that is alive: it writes ``seen_at`` every third of a lease."""

    __tablename__ = "worker_heartbeats"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class StepTiming(Base):
    """How long each step of processing a study took."""

    __tablename__ = "step_timings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(32))
    seconds: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
