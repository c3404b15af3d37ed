"""The Celery application: broker from settings, reliable delivery defaults."""

from __future__ import annotations

import logging
import time

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLATransport
from sqlalchemy.exc import IntegrityError

from worker.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds a publisher waits for the broker before the study stays in the outbox.
PUBLISH_TIMEOUT = 3.0
#: Seconds between a worker's looks at the embedded broker for tasks.
EMBEDDED_POLL = 0.1
#: Tries at creating a queue that another process creates at the same moment.
DECLARE_ATTEMPTS = 5


class EmbeddedTransport(SQLATransport):
    """kombu's SQLAlchemy transport, polled every :data:`EMBEDDED_POLL` seconds.

    kombu polls it every second, up to a second of each study's latency; a look at a small
    SQLite table ten times a second costs nothing. Its transport options all go to
    ``create_engine``, so they cannot carry the interval.
    """

    polling_interval = EMBEDDED_POLL


def create_celery(settings: Settings) -> Celery:
    """Create the Celery app for ``settings`` (Redis in production, embedded SQLite otherwise).

    Delivery is at least once: tasks are acknowledged after they finish
    (``task_acks_late``), requeued if the worker process dies (``task_reject_on_worker_lost``),
    and each worker process reserves one task at a time (prefetch 1) because inference is slow.
    """
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    broker = settings.effective_broker_url
    app = Celery("cxr_triage", broker=broker)
    if broker.startswith(("redis://", "rediss://")):
        app.conf.broker_transport_options = {"socket_timeout": PUBLISH_TIMEOUT, "max_retries": 0}
    elif broker.startswith("sqla+"):
        # URLs name transports through this table; it is the only way in for a subclass.
        TRANSPORT_ALIASES["sqla"] = f"{__name__}:EmbeddedTransport"
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue.inference_queue,
        task_routes={settings.queue.study_task: {"queue": settings.queue.inference_queue}},
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


def declare_queues(app: Celery, queues: list[str], attempts: int = DECLARE_ATTEMPTS) -> None:
    """Create ``queues`` on the broker (exchange, queue, binding) before this process uses them.

    The embedded broker keeps each queue as a row of one SQLite table, and kombu guards its
    creation with a lock of one process only: when the listener and a worker start together
    both insert the row, one gets ``IntegrityError``, and a Celery consumer takes that as
    unrecoverable and stops the worker (seen in CI). The loser tries again on a fresh connection
    and finds the row. Other errors (a broker that is down) are raised to the caller.
    """
    for attempt in range(1, attempts + 1):
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                channel = conn.default_channel
                for name in queues:
                    app.amqp.queues[name].bind(channel).declare()
            return
        except IntegrityError as exc:
            if attempt == attempts:
                raise
            logger.debug("queue created by another process meanwhile (%s); again", exc.orig)
            time.sleep(0.05 * attempt)
