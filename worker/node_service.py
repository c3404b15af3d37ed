"""Wiring of the DICOM node: settings -> database, spool, broker, listener and monitor.

This is the listener process. It imports Celery (to publish) and SQLAlchemy, never TensorFlow.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from dicom_node.completion import CompletionPolicy
from dicom_node.listener import Listener, ListenerConfig
from dicom_node.pynetdicom_seam import io_switches
from dicom_node.spool import Spool
from dicom_node.stow_inbound import StowConfig, StowServer
from dicom_node.tls import server_context
from worker.celery_app import create_celery
from worker.db.completion import StudyCompletion
from worker.db.engine import make_session_factory, open_database
from worker.db.outbox import Outbox
from worker.db.receipts import Receipts
from worker.db.sweeper import Sweeper
from worker.queueing import DeliveryEnqueuer, StudyEnqueuer
from worker.settings import Settings
from worker.study_monitor import StudyMonitor

logger = logging.getLogger(__name__)


def listener_config(
    settings: Settings, shared_socket: int | None = None, heartbeat_file: Path | None = None
) -> ListenerConfig:
    ssl_context = None
    if settings.node.tls_cert is not None and settings.node.tls_key is not None:
        ssl_context = server_context(
            settings.node.tls_cert,
            settings.node.tls_key,
            ca=settings.node.tls_ca,
            verify_client=settings.node.tls_verify_client,
        )
    return ListenerConfig(
        ae_title=settings.node.ae_title,
        bind=settings.node.bind,
        port=settings.node.port,
        max_pdu=settings.node.max_pdu,
        max_associations=settings.node.max_associations,
        max_connections=settings.node.max_connections,
        pdu_timeout=settings.node.pdu_timeout,
        handshake_timeout=settings.node.handshake_timeout,
        acse_timeout=settings.node.acse_timeout,
        dimse_timeout=settings.node.dimse_timeout,
        network_timeout=settings.node.network_timeout,
        allowed_calling_aets=frozenset(settings.node.allowed_calling_aets),
        require_called_ae=settings.node.require_called_ae,
        uid_root=settings.node.uid_root,
        assume_pa_chest=settings.node.assume_pa_chest,
        keep_ineligible=settings.storage.keep_ineligible,
        reuse_port=settings.node.reuse_port,
        ssl_context=ssl_context,
        shared_socket=shared_socket,
        heartbeat_file=heartbeat_file,
    )


@dataclass
class Node:
    """A running DICOM node: listener plus the study monitor (completion, outbox, sweeper).

    ``monitor`` is None in all but one process of ``listen --processes N``: the monitor works
    on the database, which every process shares, so one does the work for all.
    """

    settings: Settings
    engine: Engine
    receipts: Receipts
    listener: Listener
    monitor: StudyMonitor | None
    enqueue: StudyEnqueuer
    observability: Any = None
    stow: StowServer | None = None  # the STOW-RS endpoint (CXR_STOW_PORT), in one process

    def start(self) -> None:
        from worker.observability import start_observability

        self.receipts.close_orphaned_associations()
        if self.monitor is not None:
            self.monitor.start()  # its first pass runs while the listener opens its port
        else:
            logger.info("study monitor off: another process of this group runs it")
        self.listener.start()
        if self.stow is not None:
            self.stow.start()
        # The first study should not pay for the broker connection; a broker that is slow or
        # down must not hold up the listener either.
        threading.Thread(target=self.enqueue.connect, name="broker-connect", daemon=True).start()
        self.observability = start_observability(
            self.receipts.sessions, self.settings, self.settings.observability.metrics_port
        )

    def stop(self) -> None:
        if self.observability is not None:
            self.observability.stop()
        if self.stow is not None:
            self.stow.stop()
        self.listener.stop()
        if self.monitor is not None:
            self.monitor.stop()
        self.engine.dispose()


def build_node(
    settings: Settings,
    shared_socket: int | None = None,
    *,
    monitor: bool = True,
    heartbeat_file: Path | None = None,
) -> Node:
    """Build (but do not start) the node described by ``settings``.

    ``shared_socket`` is a listening socket's descriptor inherited from ``listen --processes``;
    ``monitor`` False leaves out the study monitor (another process of the group runs it);
    ``heartbeat_file`` is renewed by the accept loop for a supervising parent.
    """
    engine = open_database(settings)
    celery = create_celery(settings)
    enqueue = StudyEnqueuer(celery, settings.queue.study_task, settings.queue.inference_queue)
    redeliver = DeliveryEnqueuer(celery, settings.queue.inference_queue)
    sessions = make_session_factory(engine)
    receipts = Receipts(sessions)
    study_monitor = None
    if monitor:
        policy = CompletionPolicy(
            quiet_seconds=settings.node.quiet_seconds,
            max_wait_seconds=settings.node.max_wait_seconds,
        )
        sweeper = Sweeper(
            sessions,
            enqueue,
            redeliver=redeliver,
            lease=settings.queue.stuck_after,
            retry_delay=settings.delivery.retry_delay,
        )
        study_monitor = StudyMonitor(
            StudyCompletion(sessions, policy),
            Outbox(sessions, enqueue),
            sweeper,
            settings.node.monitor_interval,
        )
    spool = Spool(
        settings.storage.spool_dir,
        min_free_bytes=settings.storage.min_free_mb * 2**20,
        fsync=settings.storage.fsync,
    )
    listener = Listener(listener_config(settings, shared_socket, heartbeat_file), spool, receipts)
    stow = None
    if settings.node.stow_port is not None and monitor and settings.api.api_token:
        # One process of a group serves it: they would all bind the same port.
        config = StowConfig(
            settings.node.bind,
            settings.node.stow_port,
            settings.api.api_token,
            settings.node.ae_title,
            settings.node.stow_max_mb * 2**20,
        )
        stow = StowServer(config, listener.intake, receipts)
    return Node(settings, engine, receipts, listener, study_monitor, enqueue, stow=stow)


def serve(
    settings: Settings,
    shared_socket: int | None = None,
    *,
    monitor: bool = True,
    heartbeat_file: Path | None = None,
) -> None:
    """Run the node until SIGINT or SIGTERM."""
    io_switches.configure(settings.storage.spool_dir / "incoming")
    node = build_node(settings, shared_socket, monitor=monitor, heartbeat_file=heartbeat_file)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    logger.info(
        "database %s, broker %s, spool %s",
        node.engine.url.render_as_string(hide_password=True),
        settings.effective_broker_url.split("@")[-1],
        settings.storage.spool_dir,
    )
    try:
        stop.wait()
    finally:
        logger.info("shutting down")
        node.stop()
