"""Putting complete studies on the broker (the outbox's sending half)."""

from __future__ import annotations

import logging

from celery import Celery

from worker.celery_app import declare_queues
from worker.db.models import Study

logger = logging.getLogger(__name__)


def study_task_id(study: Study) -> str:
    """Deterministic task id: consumers use it to drop a duplicate delivery."""
    return f"study-{study.id}-r{study.revision}"


class StudyEnqueuer:
    """Send the study task by name, carrying identifiers only, never pixel data.

    Parameters
    ----------
    app : celery.Celery
        The application (its broker decides where the message goes).
    task_name : str
        Registered name of the worker's study task.
    queue : str
        Inference queue name.
    """

    def __init__(self, app: Celery, task_name: str, queue: str) -> None:
        self.app = app
        self.task_name = task_name
        self.queue = queue

    def connect(self) -> None:
        """Open the publishing connection and declare the queue now, not on the first study.

        A broker that is down only costs a log line: the outbox sends when it is back.
        """
        try:
            declare_queues(self.app, [self.queue])
            with self.app.producer_or_acquire() as producer:
                producer.connection.ensure_connection(max_retries=1)
        except Exception as exc:
            logger.warning("broker not reachable yet (%s); studies wait in the outbox", exc)

    def __call__(self, study: Study) -> str:
        task_id = study_task_id(study)
        self.app.send_task(
            self.task_name,
            kwargs={
                "study_id": study.id,
                "study_instance_uid": study.study_instance_uid,
                "revision": study.revision,
            },
            task_id=task_id,
            queue=self.queue,
            # Fail fast when the broker is down: the study stays in the outbox and the next
            # monitor pass tries again.
            retry=False,
        )
        return task_id


class DeliveryEnqueuer:
    """Send a delivery attempt (``worker.tasks.DELIVER_TASK``) by name."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue

    def __call__(self, object_id: int, destination: str, attempt: int) -> None:
        from worker.tasks import DELIVER_TASK

        self.app.send_task(
            DELIVER_TASK, args=[object_id, destination, attempt], queue=self.queue, retry=False
        )
