"""Celery tasks: how to run the pipeline and deliveries as tasks, nothing more."""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery

from dicom_node.addresses import parse_destination
from dicom_node.sender import SenderOptions
from dicom_node.stow import StowOptions
from worker.settings import Settings

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
                self.settings.effective_database_url, timeout=self.settings.db_timeout
            )
            self._sessions = make_session_factory(engine)
        return self._sessions

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            from models.loader import load_model
            from worker.pipeline import Pipeline

            model = load_model(self.settings.model_dir)
            self._pipeline = Pipeline(self.settings, self.sessions, model)
        return self._pipeline

    @functools.cached_property
    def sender_options(self) -> SenderOptions:
        # Built once per process: a TLS context loads certificates from disk.
        return self.settings.sender_options()

    @functools.cached_property
    def stow_options(self) -> StowOptions:
        return self.settings.stow_options()


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register the study and delivery tasks on ``app``."""
    from worker.delivery import attempt_delivery

    proc = _Process(settings)

    def deliver_now(object_id: int, destination: str, attempt: int) -> None:
        final = attempt > settings.delivery_retries
        ok = attempt_delivery(
            proc.sessions,
            settings.outputs_dir,
            object_id,
            parse_destination(destination),
            attempt,
            proc.sender_options,
            final=final,
            stow=proc.stow_options,
        )
        if not ok and not final:
            delay = settings.delivery_backoff * 2 ** (attempt - 1)
            deliver.apply_async(
                args=[object_id, destination, attempt + 1],
                countdown=delay,
                queue=settings.inference_queue,
            )

    # shared=False: a task registered on one app must not leak into every other Celery app.
    @app.task(name=settings.study_task, shared=False)
    def process_study(study_id: int, study_instance_uid: str, revision: int) -> str:
        outcome = proc.pipeline.process(study_id, revision)
        # First delivery attempt inline: results reach the PACS without another queue hop.
        for object_id, destination in outcome.to_deliver:
            deliver_now(object_id, destination, 1)
        return outcome.state

    @app.task(name=DELIVER_TASK, shared=False)
    def deliver(object_id: int, destination: str, attempt: int) -> None:
        deliver_now(object_id, destination, attempt)
