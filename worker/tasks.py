"""Celery tasks: how to run the pipeline and deliveries as tasks, nothing more."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from celery import Celery

from dicom_node.addresses import parse_destination
from dicom_node.sender import SenderOptions
from dicom_node.stow import StowOptions
from worker.settings import Settings
from worker.warm import WarmMarks

logger = logging.getLogger(__name__)

DELIVER_TASK = "cxr_triage.deliver"


class _Process:
    """Per-process state, built on first use: after the fork, as TensorFlow requires."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: Any = None
        self._pipeline: Any = None

    @property
    def sessions(self) -> Any:
        """The database, without the model: a delivery needs only this."""
        if self._sessions is None:
            from worker.db.engine import make_engine, make_session_factory

            engine = make_engine(
                self.settings.storage.effective_database_url,
                timeout=self.settings.storage.db_timeout,
            )
            self._sessions = make_session_factory(engine)
        return self._sessions

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            from models.loader import load_serving
            from worker.pipeline import Pipeline

            model = load_serving(
                self.settings.model.model_dir,
                runtime=self.settings.model.model_runtime,
                cache=self.settings.model.model_cache,
            )
            self._pipeline = Pipeline(self.settings, self.sessions, model)
        return self._pipeline

    def warm_up(self, marks: WarmMarks) -> None:
        """Load the model and run the warm-up, then mark this process warm (or failed).

        A failure is logged and marked, not raised: the pool would restart the process into the
        same failure forever. Readiness then names it, and tasks fail with it.
        """
        from worker.leases import ensure_heartbeat

        pid = os.getpid()
        try:
            # From the start, not the first task: an idle, live worker is what tells the node's
            # sweeper that queued studies with no task left in the broker were lost.
            ensure_heartbeat(self.sessions, self.settings.queue.stuck_after)
        except Exception as exc:
            logger.warning("no lease heartbeat yet: %s", exc)
        try:
            seconds = self.pipeline.warm_up()
        except Exception as exc:
            logger.exception("worker process %d could not warm up", pid)
            marks.failed(pid, f"{type(exc).__name__}: {exc}")
            return
        logger.info("worker process %d warm in %.1f s (model loaded, one inference)", pid, seconds)
        marks.mark(pid, seconds)

    @functools.cached_property
    def sender_options(self) -> SenderOptions:
        # Built once per process: a TLS context loads certificates from disk.
        return self.settings.sender_options()

    @functools.cached_property
    def stow_options(self) -> StowOptions:
        return self.settings.stow_options()


def register_tasks(app: Celery, settings: Settings) -> _Process:
    """Register the study and delivery tasks on ``app``; return the per-process state."""
    from worker.delivery import attempt_deliveries

    proc = _Process(settings)

    def deliver_now(object_ids: list[int], destination: str, attempt: int) -> None:
        """One association to ``destination`` for all ``object_ids``; each retried alone."""
        final = attempt > settings.delivery.delivery_retries
        sent = attempt_deliveries(
            proc.sessions,
            settings.storage.outputs_dir,
            object_ids,
            parse_destination(destination),
            attempt,
            proc.sender_options,
            final=final,
            stow=proc.stow_options,
            lease=settings.queue.stuck_after,
        )
        for object_id, ok in sent.items():
            if not ok and not final:
                delay = settings.delivery.retry_delay(attempt)
                deliver.apply_async(
                    args=[object_id, destination, attempt + 1],
                    countdown=delay,
                    queue=settings.queue.inference_queue,
                )

    # shared=False: a task registered on one app must not leak into every other Celery app.
    @app.task(name=settings.queue.study_task, shared=False)
    def process_study(study_id: int, study_instance_uid: str, revision: int) -> str:
        from worker.leases import release

        try:
            # This study, and other queued ones in the same model call (CXR_BATCH_SIZE).
            outcomes = proc.pipeline.process_batch(study_id, revision, study_instance_uid)
            # First delivery attempt inline: results reach the PACS without another queue hop,
            # every object of the batch for one destination over one association.
            by_destination: dict[str, list[int]] = {}
            for outcome in outcomes:
                for object_id, destination in outcome.to_deliver:
                    by_destination.setdefault(destination, []).append(object_id)
            for destination, object_ids in by_destination.items():
                deliver_now(object_ids, destination, 1)
            return outcomes[0].state
        finally:
            # The studies' leases end with the task; deliveries still due carry their own.
            release(proc.sessions)

    @app.task(name=DELIVER_TASK, shared=False)
    def deliver(object_id: int, destination: str, attempt: int) -> None:
        deliver_now([object_id], destination, attempt)

    return proc
