"""Prometheus metrics and health/readiness endpoints for the node and the workers.

Counts come from the database, not from process memory, so they stay right across several
listener and worker processes, restarts included. Served on a small HTTP server:
``/metrics`` (Prometheus text format), ``/healthz`` (alive) and ``/readyz`` (database, broker,
spool space and, on a worker, a warm model in every worker process; 503 with the failing checks
otherwise).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from worker.celery_app import create_celery
from worker.db.models import (
    REFUSED,
    STUDY_STATES,
    Delivery,
    ImageResult,
    Instance,
    Rejection,
    StepTiming,
    Study,
)
from worker.fork_gate import ForkGate
from worker.settings import Settings

logger = logging.getLogger(__name__)

#: A process's own readiness checks: name -> "ok" or why not.
MoreChecks = Callable[[], dict[str, str]]

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _step_histogram(s: Session) -> Any:
    """Step durations as a Prometheus histogram, counted by the database (one grouped query)."""
    cumulative = [func.sum(case((StepTiming.seconds <= b, 1), else_=0)) for b in BUCKETS]
    query = select(StepTiming.step, func.count(), func.sum(StepTiming.seconds), *cumulative)
    family = HistogramMetricFamily(
        "cxr_step_duration_seconds", "Duration of each pipeline step", labels=["step"]
    )
    for step, count, total, *counts in s.execute(
        query.group_by(StepTiming.step).order_by(StepTiming.step)
    ):
        buckets = [(str(b), float(n or 0)) for b, n in zip(BUCKETS, counts, strict=True)]
        buckets.append(("+Inf", float(count)))
        family.add_metric([step], buckets, sum_value=float(total or 0.0))
    return family


class DatabaseCollector:
    """Collects the service's metrics from its database at scrape time."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, app: Celery) -> None:
        self.sessions = sessions
        self.settings = settings
        self.app = app

    def collect(self) -> Iterator[Any]:
        with self.sessions() as s:
            studies = dict(s.execute(select(Study.state, func.count()).group_by(Study.state)).all())
            received = dict(
                s.execute(select(Instance.eligible, func.count()).group_by(Instance.eligible)).all()
            )
            rejected = dict(
                s.execute(select(Rejection.kind, func.count()).group_by(Rejection.kind)).all()
            )
            deliveries = dict(
                s.execute(select(Delivery.outcome, func.count()).group_by(Delivery.outcome)).all()
            )
            classified = s.execute(
                select(ImageResult.band, ImageResult.low_confidence, func.count())
                .where(ImageResult.label != REFUSED)
                .group_by(ImageResult.band, ImageResult.low_confidence)
            ).all()
            step_histogram = _step_histogram(s)
        g = GaugeMetricFamily("cxr_studies", "Studies by state", labels=["state"])
        for state in STUDY_STATES:
            g.add_metric([state], float(studies.get(state, 0)))
        yield g
        c = CounterMetricFamily(
            "cxr_instances_received", "Instances acknowledged", labels=["eligible"]
        )
        for eligible in (True, False):
            c.add_metric([str(eligible).lower()], float(received.get(eligible, 0)))
        yield c
        r = CounterMetricFamily(
            "cxr_rejections", "Refused associations and failed instances", labels=["kind"]
        )
        for kind in ("association", "instance"):
            r.add_metric([kind], float(rejected.get(kind, 0)))
        yield r
        d = CounterMetricFamily(
            "cxr_deliveries", "Delivery attempts by outcome", labels=["outcome"]
        )
        for outcome in ("pending", "delivered", "retry", "dead"):
            d.add_metric([outcome], float(deliveries.get(outcome, 0)))
        yield d
        # Low confidence beside the band: a rise says the images no longer look like the
        # training data (a new scanner, a changed processing chain).
        m = CounterMetricFamily(
            "cxr_images_classified",
            "Classified images by band and confidence (low: unlike the training data)",
            labels=["band", "confidence"],
        )
        for band, low, count in classified:
            confidence = "unassessed" if low is None else "low" if low else "usual"
            m.add_metric([band or "unknown", confidence], float(count))
        yield m
        yield GaugeMetricFamily(
            "cxr_dead_letter_studies",
            "Studies whose delivery gave up",
            value=float(studies.get("dead_letter", 0)),
        )
        yield step_histogram
        yield GaugeMetricFamily(
            "cxr_queue_depth",
            "Messages waiting on the inference queue",
            value=float(queue_depth(self.app, self.settings.queue.inference_queue)),
        )
        info = InfoMetricFamily("cxr_model", "The model the workers load")
        info.add_metric([], model_info(self.settings))
        yield info


def model_info(settings: Settings) -> dict[str, str]:
    import models
    from models.card import ModelCard

    try:
        # The card alone: the listener process must not import the model stack.
        card = ModelCard.load(settings.model.model_dir or Path(models.__file__).parent / "default")
    except Exception as exc:  # a broken card must not break scraping
        return {"name": "unreadable", "version": "", "weights_sha256": "", "error": str(exc)[:200]}
    return {"name": card.name, "version": card.version, "weights_sha256": card.weights_sha256}


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting on ``queue``; -1 if the broker cannot be asked."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            _, count, _ = conn.default_channel.queue_declare(queue, passive=True)
            return int(count)
    except Exception as exc:
        logger.debug("queue depth unavailable: %s", exc)
        return -1


def start_observability(
    sessions: sessionmaker[Session],
    settings: Settings,
    port: int,
    more_checks: MoreChecks | None = None,
    fork_gate: ForkGate | None = None,
) -> ObservabilityServer | None:
    """Start the server on ``port``; None if the port is 0 or taken (logged, not fatal).

    ``more_checks`` adds the process's own readiness checks (the worker's: its model is warm).
    ``fork_gate``: a process that forks passes its gate; each response is worked out inside it.
    """
    if port == 0:
        return None
    try:
        server = ObservabilityServer(sessions, settings, port, more_checks, fork_gate)
    except OSError as exc:
        logger.warning(
            "metrics and health endpoints off: cannot bind %s:%d (%s)",
            settings.observability.metrics_bind,
            port,
            exc,
        )
        return None
    server.start()
    return server


def readiness(sessions: sessionmaker[Session], settings: Settings, app: Celery) -> dict[str, str]:
    """Each check's result: ``ok`` or the reason it failed."""
    import shutil

    checks: dict[str, str] = {}
    try:
        with sessions() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"{type(exc).__name__}: {exc}"[:300]
    try:
        free = shutil.disk_usage(settings.storage.spool_dir).free
        need = settings.storage.min_free_mb * 2**20
        checks["spool"] = (
            "ok"
            if free >= need
            else (
                f"{free // 2**20} MiB free, below the {settings.storage.min_free_mb} MiB watermark"
            )
        )
    except OSError as exc:
        checks["spool"] = str(exc)
    return checks


class ObservabilityServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``bind:port`` in a daemon thread."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        port: int,
        more_checks: MoreChecks | None = None,
        fork_gate: ForkGate | None = None,
    ) -> None:
        registry = CollectorRegistry()
        gate: contextlib.AbstractContextManager[object] = fork_gate or contextlib.nullcontext()
        # One Celery app for the server's life: building one per scrape re-reads settings and
        # sets up a new connection pool each time.
        app = create_celery(settings)
        registry.register(DatabaseCollector(sessions, settings, app))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                # Worked out inside the gate, sent outside it: a slow client holds no fork.
                with gate:
                    code, body, kind = self._respond()
                self._send(code, body, kind)

            def _respond(self) -> tuple[int, bytes, str]:
                if self.path == "/metrics":
                    return 200, generate_latest(registry), "text/plain; version=0.0.4"
                if self.path == "/healthz":
                    return 200, b'{"status": "ok"}', "application/json"
                if self.path == "/readyz":
                    checks = readiness(sessions, settings, app)
                    if more_checks is not None:
                        checks.update(more_checks())
                    ok = all(v == "ok" for v in checks.values())
                    body = json.dumps({"ready": ok, "checks": checks}).encode()
                    return 200 if ok else 503, body, "application/json"
                return 404, b"not found: try /metrics, /healthz or /readyz", "text/plain"

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug("http: " + fmt, *args)

        self.server = ThreadingHTTPServer((settings.observability.metrics_bind, port), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="observability"
        )

    def start(self) -> None:
        self._thread.start()
        logger.info(
            "metrics and health on http://%s:%d/metrics", self.server.server_address[0], self.port
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
