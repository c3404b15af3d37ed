"""``cxr-triage work``: run a Celery worker that processes studies."""

from __future__ import annotations

import argparse

from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "work",
        help="run a worker: classify queued studies, build and send SC + SR",
        description=(
            "Consume the inference queue (CXR_INFERENCE_QUEUE) from CXR_BROKER_URL. Each worker "
            "process loads the model once, after the fork. Results go to CXR_DESTINATIONS."
        ),
    )
    p.add_argument(
        "--concurrency", type=int, help="worker processes (default CXR_WORKER_CONCURRENCY)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from worker.celery_app import create_celery
    from worker.db.engine import make_session_factory, open_database
    from worker.observability import start_observability
    from worker.tasks import register_tasks

    app = create_celery(settings)
    register_tasks(app, settings)
    # In the worker's main process (no TensorFlow here): counts come from the database.
    start_observability(
        make_session_factory(open_database(settings)), settings, settings.worker_metrics_port
    )
    concurrency = args.concurrency or settings.worker_concurrency
    app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level.upper(),
            "-Q",
            settings.inference_queue,
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
    return 0
