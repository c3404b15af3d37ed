"""``cxr-triage work``: run a Celery worker that processes studies."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from worker.settings import Settings

if TYPE_CHECKING:
    from celery.worker import WorkController

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "work",
        help="run a worker: classify queued studies, build and send SC + SR",
        description=(
            "Consume the inference queue (CXR_INFERENCE_QUEUE) from CXR_BROKER_URL. Each worker "
            "process loads the model once, after the fork, and runs one warm-up inference and "
            "Grad-CAM before it takes a task (/readyz says so). Queued studies are classified "
            "in batches of up to CXR_BATCH_SIZE. Results go to CXR_DESTINATIONS."
        ),
    )
    p.add_argument(
        "--concurrency", type=int, help="worker processes (default CXR_WORKER_CONCURRENCY)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from celery.signals import worker_init, worker_process_init

    from worker.celery_app import create_celery, declare_queues
    from worker.db.engine import make_session_factory, open_database
    from worker.fork_gate import ForkGate
    from worker.observability import start_observability
    from worker.tasks import register_tasks
    from worker.warm import WarmMarks

    app = create_celery(settings)
    proc = register_tasks(app, settings)
    concurrency = args.concurrency or settings.worker.worker_concurrency
    marks = WarmMarks(settings, os.getpid())
    marks.reset()

    # In each prefork child, before the pool gives it a task: load the model and warm up.
    def warm_child(**_: object) -> None:
        proc.warm_up(WarmMarks(settings, os.getppid()))

    worker_process_init.connect(warm_child, weak=False)
    # Before the consumer declares it: that one stops the worker if another process creates
    # the queue at the same moment (see declare_queues).
    try:
        declare_queues(app, [settings.queue.inference_queue])
    except Exception as exc:
        logger.warning("cannot declare queue %s yet (%s)", settings.queue.inference_queue, exc)
    # In the worker's main process (no TensorFlow here): counts come from the database. The
    # pool forks while this server's threads run; the gate keeps them apart (see fork_gate).
    start_observability(
        make_session_factory(open_database(settings)),
        settings,
        settings.observability.worker_metrics_port,
        lambda: {"model": marks.check(concurrency)},
        fork_gate=ForkGate(),
    )
    # worker_main drops the worker's exit status; a worker that stops on an unrecoverable
    # error must not look like a clean stop to systemd or Docker, so it is read from the worker.
    controllers: list[WorkController] = []
    worker_init.connect(lambda sender, **_: controllers.append(sender), weak=False)
    app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.observability.log_level.upper(),
            "-Q",
            settings.queue.inference_queue,
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            "cxr-triage@%h",
        ]
    )
    return int(controllers[-1].exitcode or 0) if controllers else 1
