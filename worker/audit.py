"""Audit queries: what happened to a study, and was anything received and never answered."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from worker.db.models import (
    DEAD_LETTER,
    DONE,
    FAILED,
    SKIPPED,
    Association,
    Delivery,
    ImageResult,
    Instance,
    ProducedObject,
    Receipt,
    Rejection,
    StepTiming,
    Study,
    StudyEvent,
    StudyResult,
    utcnow,
)

ERROR_STATES = {FAILED, DEAD_LETTER}


def parse_when(text: str) -> datetime:
    """``2026-11-25``, ``2026-11-25T10:00``, or an age ``30m``, ``12h``, ``7d`` (ago), in UTC.

    The one parser of times for the CLI and the API. Raises ValueError with a sentence a person
    can act on.
    """
    match = re.fullmatch(r"(\d{1,6})([mhd])", text.strip())
    if match:
        n, unit = int(match.group(1)), match.group(2)
        delta = {"m": timedelta(minutes=n), "h": timedelta(hours=n), "d": timedelta(days=n)}[unit]
        return datetime.now(UTC) - delta
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"{text!r}: use a date/time (2026-11-25T10:00) or an age such as 30m, 12h, 7d"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class StudyFilter:
    """Filters of ``cxr-triage audit studies``; None means any."""

    since: datetime | None = None
    until: datetime | None = None
    state: str | None = None
    label: str | None = None
    band: str | None = None
    priority: str | None = None
    low_confidence: bool | None = None
    calling_ae: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    model_version: str | None = None
    limit: int = 1000


def _latest_result() -> Any:
    """Subquery: the newest result row per study (its current revision's)."""
    return (
        select(StudyResult.study_id, func.max(StudyResult.id).label("rid"))
        .group_by(StudyResult.study_id)
        .subquery()
    )


def _study_query(f: StudyFilter) -> Select[Study, StudyResult]:
    latest = _latest_result()
    q = (
        select(Study, StudyResult)
        .outerjoin(latest, latest.c.study_id == Study.id)
        .outerjoin(StudyResult, StudyResult.id == latest.c.rid)
        .order_by(Study.first_instance_at.desc(), Study.id.desc())
        .limit(f.limit)
    )
    if f.since:
        q = q.where(Study.last_instance_at >= f.since)
    if f.until:
        q = q.where(Study.first_instance_at < f.until)
    if f.state:
        q = q.where(Study.state == f.state)
    if f.label:
        q = q.where(StudyResult.label == f.label)
    if f.band:
        q = q.where(StudyResult.band == f.band)
    if f.priority:
        q = q.where(StudyResult.priority == f.priority)
    if f.low_confidence is not None:
        q = q.where(StudyResult.low_confidence.is_(f.low_confidence))
    if f.model_version:
        q = q.where(StudyResult.model_version == f.model_version)
    if f.accession_number:
        q = q.where(Study.accession_number == f.accession_number)
    if f.patient_id:
        q = q.where(Study.patient_id == f.patient_id)
    if f.calling_ae:
        sent_by = (
            select(Instance.study_id)
            .join(Receipt, Receipt.instance_id == Instance.id)
            .join(Association, Association.id == Receipt.association_id)
            .where(Association.calling_ae == f.calling_ae)
        )
        q = q.where(Study.id.in_(sent_by))
    return q


def list_studies(s: Session, f: StudyFilter) -> list[dict[str, Any]]:
    """One dict per study: identifiers, state, result, timestamps."""
    out = []
    for study, result in s.execute(_study_query(f)).all():
        out.append(
            {
                "study_instance_uid": study.study_instance_uid,
                "state": study.state,
                "label": result.label if result else None,
                "band": result.band if result else None,
                "low_confidence": result.low_confidence if result else None,
                "priority": result.priority if result else None,
                "accession_number": study.accession_number,
                "patient_id": study.patient_id,
                "revision": study.revision,
                "model_version": result.model_version if result else None,
                "first_instance_at": study.first_instance_at.isoformat(),
                "completed_at": study.completed_at.isoformat() if study.completed_at else None,
                "updated_at": study.updated_at.isoformat() if study.updated_at else None,
            }
        )
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def timeline(s: Session, study_uid: str) -> dict[str, Any] | None:
    """The full story of a study, ordered in time, for ``audit show`` and ``audit export``."""
    study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one_or_none()
    if study is None:
        return None
    events: list[dict[str, Any]] = []
    instances = s.scalars(select(Instance).where(Instance.study_id == study.id)).all()
    receipts = s.scalars(
        select(Receipt).where(Receipt.instance_id.in_([i.id for i in instances]))
    ).all()
    assoc_ids = {r.association_id for r in receipts} | {i.association_id for i in instances}
    for a in s.scalars(select(Association).where(Association.id.in_(assoc_ids))):
        events.append(
            {
                "at": _iso(a.started_at),
                "what": "association",
                "detail": f"{a.calling_ae} -> {a.called_ae} from {a.peer_host}:{a.peer_port}"
                f"{' (TLS)' if a.tls else ''}, ended {_iso(a.ended_at) or 'open'} "
                f"({a.outcome})",
            }
        )
    for i in instances:
        events.append(
            {
                "at": _iso(i.received_at),
                "what": "instance",
                "detail": f"{i.sop_instance_uid} {i.modality} "
                f"{'ELIGIBLE' if i.eligible else 'skipped'} [{i.rule}] {i.reason}",
            }
        )
    sop_of = {i.id: i.sop_instance_uid for i in instances}
    for r in receipts:
        if r.duplicate:
            events.append(
                {
                    "at": _iso(r.received_at),
                    "what": "instance",
                    "detail": f"{sop_of[r.instance_id]} received again, same bytes "
                    f"(association {r.association_id}): nothing changed",
                }
            )
    sops = [i.sop_instance_uid for i in instances]
    for rej in s.scalars(select(Rejection).where(Rejection.sop_instance_uid.in_(sops))):
        events.append(
            {
                "at": _iso(rej.at),
                "what": "instance failed",
                "detail": f"{rej.sop_instance_uid} status 0x{rej.status or 0:04X}: {rej.reason}",
            }
        )
    for e in s.scalars(select(StudyEvent).where(StudyEvent.study_id == study.id)):
        events.append(
            {
                "at": _iso(e.at),
                "what": "state",
                "detail": f"{e.from_state or '-'} -> {e.to_state}: {e.detail}",
            }
        )
    for ir in s.scalars(select(ImageResult).where(ImageResult.study_id == study.id)):
        probs = ", ".join(f"{k} {v:.3f}" for k, v in ir.probabilities.items())
        outcome = f"not classified: {ir.refusal}" if ir.refusal else f"{ir.label} ({probs})"
        if ir.novelty is not None:
            low = "low confidence, " if ir.low_confidence else ""
            outcome += f" [{low}distance to training data {ir.novelty:.2f} of its limit]"
        events.append(
            {
                "at": _iso(ir.created_at),
                "what": "image result",
                "detail": f"revision {ir.revision}: {outcome} by {ir.model_name} "
                f"{ir.model_version}",
            }
        )
    for srow in s.scalars(select(StudyResult).where(StudyResult.study_id == study.id)):
        events.append(
            {
                "at": _iso(srow.created_at),
                "what": "study result",
                "detail": f"revision {srow.revision}: {srow.label}, priority {srow.priority}, "
                + ("low confidence, " if srow.low_confidence else "")
                + f"thresholds {srow.thresholds} ({srow.operating_point}), "
                f"weights {srow.weights_sha256[:12]}",
            }
        )
    timings = s.scalars(select(StepTiming).where(StepTiming.study_id == study.id)).all()
    if timings:
        steps = ", ".join(f"{t.step} {t.seconds * 1000:.0f} ms" for t in timings)
        events.append({"at": _iso(timings[-1].at), "what": "timings", "detail": steps})
    objects = s.scalars(select(ProducedObject).where(ProducedObject.study_id == study.id)).all()
    for o in objects:
        events.append(
            {
                "at": _iso(o.created_at),
                "what": f"produced {o.kind}",
                "detail": f"{o.sop_instance_uid} (series {o.series_instance_uid})",
            }
        )
    kinds = {o.id: o.kind for o in objects}
    for d in s.scalars(select(Delivery).where(Delivery.object_id.in_(kinds))):
        status = f"0x{d.status:04X}" if d.status is not None else "no status"
        events.append(
            {
                "at": _iso(d.at),
                "what": "delivery",
                "detail": f"{kinds[d.object_id]} -> {d.destination} attempt {d.attempt}: "
                f"{d.outcome} ({status}){': ' + d.error if d.error else ''}",
            }
        )
    events.sort(key=lambda e: e["at"] or "")
    return {
        "study_instance_uid": study.study_instance_uid,
        "state": study.state,
        "accession_number": study.accession_number,
        "patient_id": study.patient_id,
        "revision": study.revision,
        "events": events,
    }


def reconcile(s: Session, since: datetime, grace: timedelta) -> list[dict[str, Any]]:
    """Instances received since ``since`` that have neither a delivered (or stored) result, a
    recorded skip, nor an open error — once their study has had ``grace`` to finish."""
    cutoff = utcnow() - grace
    # One query: each instance with whether it has a result for its study's current revision.
    result_id = (
        select(ImageResult.id)
        .where(ImageResult.instance_id == Instance.id, ImageResult.revision == Study.revision)
        .limit(1)
        .scalar_subquery()
    )
    rows = s.execute(
        select(Instance, Study, result_id)
        .join(Study, Study.id == Instance.study_id)
        .where(Instance.received_at >= since, Instance.eligible)
    ).all()
    unaccounted = []
    for inst, study, has_result in rows:
        if study.state in ERROR_STATES or study.state == SKIPPED:
            continue
        if study.state == DONE:
            if has_result is not None:
                continue
            reason = "study done but this instance has no result"
        elif study.last_instance_at > cutoff:
            continue  # still within its grace period
        else:
            reason = f"study still '{study.state}' after {grace}"
        unaccounted.append(
            {
                "sop_instance_uid": inst.sop_instance_uid,
                "study_instance_uid": study.study_instance_uid,
                "received_at": _iso(inst.received_at),
                "reason": reason,
            }
        )
    return unaccounted


def list_rejections(
    s: Session, *, since: datetime | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Refused associations, connections and instances, newest first."""
    q = select(Rejection, Association.calling_ae, Association.peer_host, Association.peer_port)
    q = q.outerjoin(Association, Association.id == Rejection.association_id)
    if since is not None:
        q = q.where(Rejection.at >= since)
    out = []
    for rej, assoc_ae, assoc_host, assoc_port in s.execute(
        q.order_by(Rejection.id.desc()).limit(limit)
    ):
        out.append(
            {
                "at": _iso(rej.at),
                "kind": rej.kind,
                "calling_ae": rej.calling_ae or assoc_ae or "",
                "called_ae": rej.called_ae,
                "peer_host": rej.peer_host or assoc_host or "",
                "peer_port": rej.peer_port or assoc_port or 0,
                "status": rej.status,
                "sop_instance_uid": rej.sop_instance_uid,
                "reason": rej.reason,
            }
        )
    return out
