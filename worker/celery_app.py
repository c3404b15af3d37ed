"""The Celery application: broker from settings, reliable delivery defaults."""

from __future__ import annotations

from celery import Celery

from worker.settings import Settings

#: Seconds a publisher waits for the broker before the study stays in the outbox.
PUBLISH_TIMEOUT = 3.0


def create_celery(settings: Settings) -> Celery:
    """Create the Celery app for ``settings`` (Redis in production, embedded SQLite otherwise).

    Delivery is at least once: tasks are acknowledged after they finish
    (``task_acks_late``), requeued if the worker process dies (``task_reject_on_worker_lost``),
    and each worker process reserves one task at a time (prefetch 1) because inference is slow.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker = settings.effective_broker_url
    app = Celery("cxr_triage", broker=broker)
    if broker.startswith(("redis://", "rediss://")):
        app.conf.broker_transport_options = {"socket_timeout": PUBLISH_TIMEOUT, "max_retries": 0}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.inference_queue,
        task_routes={settings.study_task: {"queue": settings.inference_queue}},
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=PUBLISH_TIMEOUT,
        broker_connection_retry_on_startup=True,
        result_backend=None,
        task_ignore_result=True,
        # A prefork child loads the model and warms up before it reports up (seconds, more on
        # a busy machine); billiard's default of 4 s would kill it in the middle.
        worker_proc_alive_timeout=300.0,
    )
    return app
