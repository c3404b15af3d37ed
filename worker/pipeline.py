"""Processing one study: spool -> model -> SC + SR -> destinations, every step recorded.

Plain functions that tests call directly; ``worker.tasks`` only says how to run them as Celery
tasks.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import pydicom
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.addresses import carries
from dicom_node.results.algorithm import Algorithm
from dicom_node.results.sc import build_gradcam_sc
from dicom_node.results.sr import ImageResult as SRImage
from dicom_node.results.sr import build_report
from dicom_node.results.triage import NOT_FLAGGED, Triage
from dicom_node.spool import Spool
from worker.claims import IN_BATCH, Claimed, claim, claim_waiting, wait_for_batch
from worker.db.models import (
    DELIVERING,
    DONE,
    FAILED,
    PROCESSING,
    REFUSED,
    SKIPPED,
    Delivery,
    ImageResult,
    Instance,
    ProducedObject,
    StepTiming,
    Study,
    StudyResult,
    utcnow,
)
from worker.db.transitions import move
from worker.decision import operating_point_for
from worker.leases import LeaseLostError, ensure_heartbeat, owner
from worker.logs import study_context
from worker.outputs import derived_uid, write_object
from worker.settings import Settings

if TYPE_CHECKING:  # models is imported lazily: the package pulls in TensorFlow on use
    from models.imaging import CropBox
    from models.loader import Prediction

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What processing a study did; ``to_deliver`` lists (object id, destination) to send."""

    state: str
    label: str | None = None
    to_deliver: list[tuple[int, str]] = field(default_factory=list)
    error: Exception | None = None  # what failed the study (state "failed")


@dataclass
class Timer:
    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.steps.append((name, time.perf_counter() - start))


@dataclass
class _Loaded:
    """What the load stage read: the study's eligible instances, datasets, display images."""

    instances: list[Instance]
    datasets: list[pydicom.Dataset]
    images: list[Any]


@dataclass
class _Inferred:
    """The images the image check kept, with their predictions, and those it refused."""

    instances: list[Instance]
    datasets: list[pydicom.Dataset]
    images: list[Any]
    predictions: list[Any]
    refusals: list[tuple[Instance, str | None]]
    shrink: int

    @property
    def any_kept(self) -> bool:
        return bool(self.predictions)


@dataclass(frozen=True)
class _Decided:
    """The decide stage's result: the study's triage and each kept image's, in order."""

    study: Triage
    images: list[Triage]


@dataclass
class _Built:
    """A result object: its kind, dataset, source image and path under the outputs folder."""

    kind: str  # "sc" or "sr"
    ds: pydicom.Dataset
    source: str | None  # the source SOP Instance UID of an SC
    path: str | None = None  # set once written (or kept from an earlier revision)


def _model_columns(algorithm: Algorithm) -> dict[str, str]:
    """The columns that attribute a result row to its model."""
    return {
        "model_name": algorithm.name,
        "model_version": algorithm.version,
        "weights_sha256": algorithm.weights_sha256,
    }


def _box(crop: CropBox | None) -> tuple[float, float, float, float] | None:
    """(left, top, right, bottom) of the region the model looked at."""
    if crop is None:
        return None
    return (crop.left, crop.top, crop.left + crop.cols, crop.top + crop.rows)


def _add_timings(s: Session, study_id: int, revision: int, timer: Timer) -> None:
    for name, seconds in timer.steps:
        s.add(StepTiming(study_id=study_id, revision=revision, step=name, seconds=seconds))


class Pipeline:
    """The study pipeline, holding the model once per worker process."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], model: object) -> None:
        self.settings = settings
        self.sessions = sessions
        self.model = model  # models.loader.LoadedModel
        card = model.card  # type: ignore[attr-defined]
        self.algorithm = Algorithm(card.name, card.version, card.weights_sha256)
        self.operating_point = operating_point_for(settings, card)
        self.operating_point.apply(model)
        logger.info("operating point: %s", self.operating_point.describe())
        self.spool = Spool(settings.storage.spool_dir, fsync=settings.storage.fsync)

    def warm_up(self) -> float:
        """Run a synthetic radiograph through the model, Grad-CAM and the SC and SR builders.

        Writes and records nothing. Called once per worker process before it takes tasks, so
        that the first study does not pay for tracing graphs and first imports. Returns seconds.
        """
        from dicom_node.synthetic import radiograph
        from models.imaging import dicom_to_image, shrink_factor

        start = time.perf_counter()
        # Large enough to be decimated for the SC, small enough to make quickly.
        ds = radiograph(rows=1400, columns=1700, bits=16, seed=1)
        image = dicom_to_image(ds)
        shrink = shrink_factor(image.shape, self.settings.worker.sc_max_size)
        pred = self.model.warm_up(image, shrink)  # type: ignore[attr-defined]
        # A flagged finding, whatever the model said of a synthetic image: the heatmap overlay
        # runs too.
        finding = next(lab for lab in self.model.labels if lab != "normal")  # type: ignore[attr-defined]
        certain = {lab: float(lab == finding) for lab in self.model.labels}  # type: ignore[attr-defined]
        pred = replace(pred, label=finding, probabilities=certain, heatmap_label=finding)
        warm = _Inferred([], [ds], [image], [pred], [], shrink)
        self._build(ds.StudyInstanceUID, 1, warm, self._decide([pred]), Timer())
        return time.perf_counter() - start

    def process(self, study_id: int, revision: int, study_uid: str) -> Outcome:
        """Classify a study revision, build and store its SC and SR, and list what to send.

        Raises what failed the study (after recording it ``failed``).
        """
        outcome = self.process_batch(study_id, revision, study_uid, batch_size=1)[0]
        if outcome.error is not None:
            raise outcome.error
        return outcome

    def process_batch(
        self, study_id: int, revision: int, study_uid: str, *, batch_size: int | None = None
    ) -> list[Outcome]:
        """Process a study together with up to ``batch_size - 1`` other queued studies.

        Their images go through the model in one call; everything else is per study, as if
        each had been processed alone. The first outcome is ``study_id``'s; the others follow
        (also those of a batch taken while another task's batch held ``study_id``). A study
        that fails is recorded ``failed`` and its outcome carries the exception; the others go
        on.
        """
        size = self.settings.worker.batch_size if batch_size is None else batch_size
        lease = self.settings.queue.stuck_after
        ensure_heartbeat(self.sessions, lease)  # renews this process's leases while it works
        reason = claim(self.sessions, study_id, revision, lease)
        meanwhile: list[Outcome] = []
        if reason == IN_BATCH:
            # Another task's batch holds our study. Rather than wait idle, take a batch of what
            # else is queued; then see what became of ours.
            if size > 1:
                others = claim_waiting(self.sessions, study_id, size, lease, 0.0)
                if others:
                    meanwhile = self._process(others)
            reason = wait_for_batch(self.sessions, study_id, revision, lease)
        if reason is not None:
            logger.info("study %d revision %d not processed: %s", study_id, revision, reason)
            return [Outcome(reason), *meanwhile]
        ours = Claimed(study_id, revision, study_uid)
        if meanwhile:  # our study came back to us (its batch died): alone, it is late already
            return [*self._process([ours]), *meanwhile]
        batch = [ours]
        if size > 1:
            batch += claim_waiting(
                self.sessions, study_id, size - 1, lease, self.settings.worker.batch_wait
            )
        if len(batch) > 1:
            logger.info("study %d: batched with %d waiting studies", study_id, len(batch) - 1)
        return self._process(batch)

    def _process(self, batch: list[Claimed]) -> list[Outcome]:
        """The stages, in order, for a batch of claimed studies.

        load -> check + infer (one model call for the batch) -> decide -> build -> store ->
        record; the task then delivers what :class:`Outcome` lists. A study that fails a stage
        is recorded ``failed`` and leaves the batch; the others go on.
        """
        timers = {c.study_id: Timer() for c in batch}
        outcomes: dict[int, Outcome] = {}
        loaded: dict[int, _Loaded] = {}
        for c in batch:
            with self._failing_study(c, outcomes):
                loaded[c.study_id] = self._load(c, timers[c.study_id])
        try:
            inferred = self._infer(loaded, timers)
        except Exception as exc:  # the model call failed: every study in it failed
            inferred = {}
            for c in batch:
                if c.study_id in loaded:
                    self._fail(c, exc, outcomes)
        for c in batch:
            if c.study_id in inferred:
                with self._failing_study(c, outcomes):
                    outcomes[c.study_id] = self._conclude(
                        c, inferred[c.study_id], timers[c.study_id]
                    )
        return [outcomes[c.study_id] for c in batch]

    def _conclude(self, c: Claimed, inferred: _Inferred, timer: Timer) -> Outcome:
        """decide -> build -> store -> record, for one study the model has seen."""
        if not inferred.any_kept:
            return self._skip_refused(c.study_id, c.revision, inferred.refusals, timer)
        decision = self._decide(inferred.predictions)
        built = self._build(c.study_uid, c.revision, inferred, decision, timer)
        self._store(c.study_uid, built, timer)
        return self._record(c.study_id, c.revision, c.study_uid, inferred, decision, built, timer)

    @contextmanager
    def _failing_study(self, c: Claimed, outcomes: dict[int, Outcome]) -> Iterator[None]:
        """Run one study's step; on an exception record it ``failed`` and leave the rest be."""
        with study_context(c.study_uid):
            try:
                yield
            except LeaseLostError as exc:
                # This process stalled past its lease (hung, or cut off from the database) and
                # another took the study over: leave it to that one, record nothing.
                logger.warning("%s; leaving it", exc)
                outcomes[c.study_id] = Outcome("taken over")
            except Exception as exc:
                self._fail(c, exc, outcomes)

    def _fail(self, c: Claimed, exc: Exception, outcomes: dict[int, Outcome]) -> None:
        logger.exception("study %d failed", c.study_id, exc_info=exc)
        with self.sessions.begin() as s:
            detail = f"{type(exc).__name__}: {exc}"[:2000]
            move(
                s,
                c.study_id,
                FAILED,
                detail,
                expect=[PROCESSING],
                where=[Study.lease_owner == owner()],  # not a study another worker took over
            )
        outcomes[c.study_id] = Outcome(FAILED, error=exc)

    def _load(self, c: Claimed, timer: Timer) -> _Loaded:
        """The study's eligible, spooled instances, read and turned into display images."""
        from models.imaging import dicom_to_image

        with self.sessions() as s:
            instances = s.scalars(
                select(Instance)
                .where(
                    Instance.study_id == c.study_id,
                    Instance.eligible,
                    Instance.spool_path.is_not(None),
                )
                .order_by(Instance.received_at, Instance.id)
            ).all()
        if not instances:
            raise RuntimeError("no eligible instance with a spooled file")
        with timer.step("load"):
            datasets: list[pydicom.Dataset] = [
                pydicom.dcmread(self.spool.path_of(i.spool_path or "")) for i in instances
            ]
            images = [dicom_to_image(ds) for ds in datasets]
        return _Loaded(list(instances), datasets, images)

    def _infer(self, loaded: dict[int, _Loaded], timers: dict[int, Timer]) -> dict[int, _Inferred]:
        """Image check, classification and Grad-CAM of every study's images in one model call.

        Refused images are set apart. Each study's timer gets the whole call's time: that is
        what the study waited for.
        """
        from models.imaging import is_colour, shrink_factor

        if not loaded:
            return {}
        # One shrink factor per study: its SCs stay below CXR_SC_MAX_SIZE pixels a side.
        shrinks = {
            sid: max(
                shrink_factor(img.shape, self.settings.worker.sc_max_size) for img in ld.images
            )
            for sid, ld in loaded.items()
        }
        images = [img for ld in loaded.values() for img in ld.images]
        start = time.perf_counter()
        checked = self.model.predict(  # type: ignore[attr-defined]
            images,
            heatmaps=True,
            heatmap_shrink=[shrinks[sid] for sid, ld in loaded.items() for _ in ld.images],
            colour=[is_colour(ds) for ld in loaded.values() for ds in ld.datasets],
        )
        seconds = time.perf_counter() - start
        out: dict[int, _Inferred] = {}
        at = 0
        for sid, ld in loaded.items():
            timers[sid].steps.append(("predict_gradcam", seconds))
            mine = checked[at : at + len(ld.images)]
            at += len(ld.images)
            kept = [i for i, p in enumerate(mine) if not p.refused]
            out[sid] = _Inferred(
                instances=[ld.instances[i] for i in kept],
                datasets=[ld.datasets[i] for i in kept],
                images=[ld.images[i] for i in kept],
                predictions=[mine[i] for i in kept],
                refusals=[
                    (inst, p.refused)
                    for inst, p in zip(ld.instances, mine, strict=True)
                    if p.refused
                ],
                shrink=shrinks[sid],
            )
        return out

    def _decide(self, predictions: list[Prediction]) -> _Decided:
        study, images = self.operating_point.decide(
            [p.probabilities for p in predictions], [p.novelty for p in predictions]
        )
        return _Decided(study, images)

    def _build(
        self,
        study_uid: str,
        revision: int,
        inferred: _Inferred,
        decided: _Decided,
        timer: Timer,
    ) -> list[_Built]:
        """The Grad-CAM SCs and the SR (not yet written: see :meth:`_store`).

        An SC is named by its input (source pixels, model, scale), not by the revision: an image
        unchanged since an earlier revision keeps its SC, UIDs and file, so a new revision does
        not put a second heatmap of the same image in the PACS under new UIDs.
        """
        from models.gradcam import colour_ramp, overlay
        from models.imaging import decimate

        algo = self.algorithm
        root = self.settings.node.uid_root
        outputs = self.settings.storage.outputs_dir
        op = self.operating_point
        # The SC's numbers, words and colours follow from these: a change makes a new SC.
        temperature = self.model.card.temperature  # type: ignore[attr-defined]
        decided_by = (sorted(op.thresholds.items()), op.margin, temperature)
        sc_series = derived_uid(root, study_uid, algo.weights_sha256, "sc-series")
        ramp = colour_ramp()
        scs: list[_Built] = []
        with timer.step("build_sc"):
            for n, (ds, image, pred, triage) in enumerate(
                zip(
                    inferred.datasets,
                    inferred.images,
                    inferred.predictions,
                    decided.images,
                    strict=True,
                )
            ):
                pixels = hashlib.sha256(ds.get("PixelData") or b"").hexdigest()
                uid = derived_uid(
                    root, study_uid, algo.weights_sha256, "sc", ds.SOPInstanceUID, pixels,
                    inferred.shrink, decided_by,
                    # Only where assessed, so a model without an index keeps its UIDs.
                    *([] if triage.low_confidence is None else [triage.low_confidence]),
                )  # fmt: skip
                kept = self._kept_object(uid)
                if kept is not None:
                    header = pydicom.dcmread(outputs / kept, stop_before_pixels=True)
                    scs.append(_Built("sc", header, ds.SOPInstanceUID, kept))
                    continue
                # Nothing flagged or near: nothing to point at, the SC is the radiograph,
                # uncoloured.
                heat = None if triage.band == NOT_FLAGGED else pred.heatmap
                sc = build_gradcam_sc(
                    ds,
                    overlay(decimate(image, inferred.shrink), heat),
                    triage=triage,
                    heatmap_label=pred.heatmap_label if heat is not None else None,
                    algorithm=algo,
                    colour_ramp=ramp,
                    series_instance_uid=sc_series,
                    sop_instance_uid=uid,
                    instance_number=n + 1,
                )
                scs.append(_Built("sc", sc, ds.SOPInstanceUID))
        with timer.step("build_sr"):
            headers = [ds.copy() for ds in inferred.datasets]
            for h in headers:
                h.pop("PixelData", None)
            key = (study_uid, revision, algo.weights_sha256)
            sr = build_report(
                [
                    SRImage(
                        h,
                        t,
                        p.probabilities,
                        region=_box(p.crop),
                        heatmap=sc.ds,
                    )
                    for h, p, t, sc in zip(
                        headers, inferred.predictions, decided.images, scs, strict=True
                    )
                ],
                decided.study,
                evidence=[*headers, *(b.ds for b in scs)],
                algorithm=algo,
                series_instance_uid=derived_uid(root, *key, "sr-series"),
                sop_instance_uid=derived_uid(root, *key, "sr"),
                device_uid=derived_uid(root, "device", algo.name, algo.version),
            )
        return [*scs, _Built("sr", sr, None)]

    def _store(self, study_uid: str, built: list[_Built], timer: Timer) -> None:
        """Write the objects not kept from an earlier revision into the outputs folder."""
        with timer.step("store"):
            for b in built:
                if b.path is None:
                    b.path = write_object(b.ds, self.settings.storage.outputs_dir, study_uid)

    def _kept_object(self, sop_instance_uid: str) -> str | None:
        """The path of an object already produced with this UID, if its file is still there."""
        with self.sessions() as s:
            path = s.scalars(
                select(ProducedObject.path).where(
                    ProducedObject.sop_instance_uid == sop_instance_uid
                )
            ).one_or_none()
        if path is None or not (self.settings.storage.outputs_dir / path).is_file():
            return None
        return path

    def _record(
        self,
        study_id: int,
        revision: int,
        study_uid: str,
        inferred: _Inferred,
        decided: _Decided,
        built: list[_Built],
        timer: Timer,
    ) -> Outcome:
        """Results, produced objects and the delivery plan in one transaction; the next state."""
        decision = decided.study
        by = _model_columns(self.algorithm)
        shadow = self.settings.delivery.shadow_mode
        # Shadow mode: everything is made and recorded, nothing is sent.
        destinations = [] if shadow else list(self.settings.delivery.destinations)
        with self.sessions.begin() as s:
            s.execute(
                delete(ImageResult).where(
                    ImageResult.study_id == study_id, ImageResult.revision == revision
                )
            )
            s.execute(
                delete(StudyResult).where(
                    StudyResult.study_id == study_id, StudyResult.revision == revision
                )
            )
            self._add_refusals(s, study_id, revision, inferred.refusals)
            for inst, pred, image in zip(
                inferred.instances, inferred.predictions, decided.images, strict=True
            ):
                s.add(
                    ImageResult(
                        study_id=study_id,
                        instance_id=inst.id,
                        revision=revision,
                        label=image.label,
                        band=image.band,
                        probabilities=pred.probabilities,
                        novelty=pred.novelty,
                        low_confidence=image.low_confidence,
                        **by,
                    )
                )
            s.add(
                StudyResult(
                    study_id=study_id,
                    revision=revision,
                    label=decision.label,
                    band=decision.band,
                    priority=decision.priority,
                    low_confidence=decision.low_confidence,
                    thresholds=decision.thresholds,
                    operating_point=(
                        self.operating_point.source + ("; shadow mode" if shadow else "")
                    )[:200],
                    **by,
                )
            )
            object_ids = []
            for b in built:
                row = s.scalars(
                    select(ProducedObject).where(
                        ProducedObject.sop_instance_uid == b.ds.SOPInstanceUID
                    )
                ).one_or_none()
                if row is None:
                    row = ProducedObject(sop_instance_uid=b.ds.SOPInstanceUID)
                    s.add(row)
                row.study_id, row.revision, row.kind = study_id, revision, b.kind
                row.path = b.path or ""
                row.series_instance_uid = b.ds.SeriesInstanceUID
                row.sop_class_uid = b.ds.SOPClassUID
                row.source_sop_instance_uid = b.source
                s.flush()
                object_ids.append(row.id)
            # The delivery plan: one pending row per object and destination, so the study is
            # "done" only when every one of them has been delivered.
            # An HL7 receiver gets the result (the SR), not the pictures (addresses.carries).
            plan = [
                (object_id, str(dest))
                for object_id, b in zip(object_ids, built, strict=True)
                for dest in destinations
                if carries(dest, b.kind)
            ]
            for object_id, dest in plan:
                s.add(
                    Delivery(
                        object_id=object_id,
                        destination=dest,
                        attempt=0,
                        outcome="pending",
                        at=utcnow(),
                    )
                )
            _add_timings(s, study_id, revision, timer)
            confidence = "; low confidence" if decision.low_confidence else ""
            detail = (
                f"{decision.label} {decision.band} ({decision.priority}){confidence}; "
                f"{len(built) - 1} SC + 1 SR"
            )
            if inferred.refusals:
                detail += f"; {len(inferred.refusals)} image(s) refused by the image check"
            if shadow:
                detail += "; shadow mode: not delivered"
            if not move(
                s,
                study_id,
                DELIVERING if destinations else DONE,
                detail,
                expect=[PROCESSING],
                where=[Study.lease_owner == owner()],
            ):
                # Nothing of this transaction is kept: the results are the new owner's to record.
                raise LeaseLostError(f"study {study_uid}: its lease passed to another worker")
        logger.info("study %s: %s, priority %s", study_uid, decision.label, decision.priority)
        return Outcome(DELIVERING if destinations else DONE, decision.label, plan)

    def _add_refusals(
        self, s: Session, study_id: int, revision: int, refusals: list[tuple[Instance, str | None]]
    ) -> None:
        for inst, reason in refusals:
            logger.warning("instance %s not classified: %s", inst.sop_instance_uid, reason)
            s.add(
                ImageResult(
                    study_id=study_id,
                    instance_id=inst.id,
                    revision=revision,
                    label=REFUSED,
                    probabilities={},
                    refusal=reason,
                    **_model_columns(self.algorithm),
                )
            )

    def _skip_refused(
        self,
        study_id: int,
        revision: int,
        refusals: list[tuple[Instance, str | None]],
        timer: Timer,
    ) -> Outcome:
        """Every image failed the image check: record why, send nothing, end ``skipped``."""
        with self.sessions.begin() as s:
            s.execute(
                delete(ImageResult).where(
                    ImageResult.study_id == study_id, ImageResult.revision == revision
                )
            )
            self._add_refusals(s, study_id, revision, refusals)
            _add_timings(s, study_id, revision, timer)
            reasons = sorted({r or "" for _, r in refusals})
            move(
                s,
                study_id,
                SKIPPED,
                "; ".join(reasons)[:2000],
                expect=[PROCESSING],
                where=[Study.lease_owner == owner()],
            )
        logger.info("study %d skipped: no image passed the image check", study_id)
        return Outcome(SKIPPED)
