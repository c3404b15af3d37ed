"""The C-STORE and C-ECHO SCP: receive, check, spool and record instances.

Every C-STORE is answered ``0x0000`` only after the instance's bytes are fsync'd into the spool
and its row is committed through :class:`~dicom_node.interfaces.NodeRecorder`. Handlers never
raise to the peer: every failure becomes a DIMSE failure status, a log line and, where the
database is reachable, an audit row.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.intake import Intake
from dicom_node.interfaces import NodeRecorder, PeerInfo
from dicom_node.pynetdicom_seam import contract
from dicom_node.pynetdicom_seam.incoming import (
    discard_partial_datasets,
    dropped_reason,
    has_dataset,
    receiving_into,
    request_file,
    stop_receiving,
    sweep_stale,
    watch_datasets,
)
from dicom_node.pynetdicom_seam.io_switches import receiving_to_files
from dicom_node.pynetdicom_seam.pdu_reader import PduLimits, install_reader
from dicom_node.pynetdicom_seam.server import (
    ConnectionHandler,
    GuardedAssociationServer,
    register_server,
)
from dicom_node.pynetdicom_seam.sockets import no_delay
from dicom_node.spool import LowDiskSpaceError, Spool
from dicom_node.statuses import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
)
from dicom_node.transfer_syntaxes import ACCEPTED_TRANSFER_SYNTAXES
from dicom_node.uids import DEFAULT_UID_ROOT

logger = logging.getLogger(__name__)

# How often the accept loop looks for incoming/ files nobody is writing any more.
_SWEEP_INTERVAL = 30.0
# How many received bytes between two free-space checks while a dataset arrives.
_SPACE_CHECK_BYTES = 4 * 2**20
# Requested receive buffer per association (the kernel caps it at net.core.rmem_max * 2).
_RCVBUF = 8 * 2**20
# On a socket shared by sibling processes, how long a process waits per connection it already
# holds before it accepts a new one (at most _MAX_DEFERRED of them): an idle sibling takes it.
# Long enough for a sibling starved of CPU to get there first (10 and 50 ms were not, with the
# cores busy); at most a second's wait to be accepted when every process is busy.
_DEFER_PER_CONNECTION = 0.2
_MAX_DEFERRED = 5


@dataclass(frozen=True)
class ListenerConfig:
    """Network and policy settings of the SCP (see ``docs/configuration.md``)."""

    ae_title: str = "CXR_TRIAGE"
    bind: str = "127.0.0.1"
    port: int = 11112
    max_pdu: int = 1_048_576
    max_associations: int = 16
    max_connections: int = 128
    pdu_timeout: float = 30.0
    handshake_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    allowed_calling_aets: frozenset[str] = field(default_factory=frozenset)
    require_called_ae: bool = True
    uid_root: str = DEFAULT_UID_ROOT
    assume_pa_chest: bool = False
    keep_ineligible: bool = False
    reuse_port: bool = False
    ssl_context: ssl.SSLContext | None = None
    #: File descriptor of a listening socket that sibling processes share (``listen
    #: --processes N``): accept from it instead of binding one.
    shared_socket: int | None = None
    #: A file whose modification time the accept loop renews about once a second, so that a
    #: supervising parent can tell a hung listener from a busy one.
    heartbeat_file: Path | None = None


class _Server(GuardedAssociationServer):
    """The guarded server plus SO_REUSEPORT, a large receive buffer and incoming/ housekeeping."""

    listener: Listener

    def server_bind(self) -> None:
        assert self.socket is not None  # made by TCPServer before it binds
        if self.listener.config.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit a large receive buffer: the sender should not stall while
        # the handler of the previous C-STORE runs.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        super().server_bind()

    def service_actions(self) -> None:
        super().service_actions()
        self.listener._housekeeping()
        self.listener._beat()


class _SiblingServer(_Server):
    """A server on a listening socket that sibling processes share (``listen --processes N``).

    Every sibling wakes for a new connection and the least busy accepts first: one holding
    connections waits for each before it tries. (With SO_REUSEPORT the kernel's hash decides,
    and often gives one process two associations and another none.)
    """

    def server_bind(self) -> None:
        assert self.socket is not None and self.listener.config.shared_socket is not None
        self.socket.close()
        self.socket = socket.socket(fileno=self.listener.config.shared_socket)
        # Non-blocking: a sibling may take the connection between select() and accept().
        self.socket.setblocking(False)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        held = min(self.listener.open_connections, _MAX_DEFERRED)
        if held:
            time.sleep(held * _DEFER_PER_CONNECTION)
        return super().get_request()  # BlockingIOError if a sibling was quicker: ignored

    def server_close(self) -> None:
        if self.socket is not None:
            self.socket.close()  # shutdown() would stop the siblings' listening too


def storage_contexts(
    transfer_syntaxes: Iterable[str] = ACCEPTED_TRANSFER_SYNTAXES,
) -> list[PresentationContext]:
    """Presentation contexts for every storage SOP class with the given transfer syntaxes."""
    contexts = []
    for cx in AllStoragePresentationContexts:
        new = PresentationContext()
        new.abstract_syntax = cx.abstract_syntax
        new.transfer_syntax = list(transfer_syntaxes)
        contexts.append(new)
    return contexts


class Listener:
    """DICOM C-STORE/C-ECHO SCP that spools PA chest radiographs.

    Parameters
    ----------
    config : ListenerConfig
        Network and policy settings.
    spool : Spool
        Where instances are written.
    recorder : NodeRecorder
        Database-backed record of associations and instances, supplied by the application.
    """

    def __init__(self, config: ListenerConfig, spool: Spool, recorder: NodeRecorder) -> None:
        self.config = config
        self.spool = spool
        self.recorder = recorder
        self.intake = Intake(
            spool, recorder, config.uid_root, config.assume_pa_chest, config.keep_ineligible
        )
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._associations: dict[int, int] = {}  # id(Association) -> association row id
        self._open: set[int] = set()  # id(Association) of accepted, not yet closed ones
        self._live: dict[int, Any] = {}  # id(Association) -> Association, for stop()
        self._files: dict[int, set[Path]] = {}  # id(Association) -> incoming/ files it opened
        self._connections = 0
        self._next_beat = 0.0
        self._next_sweep = 0.0
        self._limits = PduLimits(max_pdata=config.max_pdu, timeout=config.pdu_timeout)

    # -- life cycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("listener is not running")
        return int(self._server.server_address[1])

    @property
    def open_associations(self) -> int:
        """Accepted associations not yet ended."""
        with self._lock:
            return len(self._open)

    @property
    def open_connections(self) -> int:
        """TCP connections held, associated or not."""
        with self._lock:
            return self._connections

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = self.config.max_pdu
        # pynetdicom counts every connection, associated or not; our EVT_REQUESTED check counts
        # associations, and admit_connection counts connections.
        ae.maximum_associations = self.config.max_connections
        ae.acse_timeout = self.config.acse_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        ae.require_called_aet = False
        ae.supported_contexts = storage_contexts()
        ae.add_supported_context(Verification)
        return ae

    def start(self) -> None:
        """Bind the port and serve in background threads."""
        if not receiving_to_files():
            raise RuntimeError(
                "receiving needs dicom_node.pynetdicom_seam.io_switches.configure(spool incoming) "
                "at the entry point (cxr-triage listen does it)"
            )
        contract.check()  # an unvetted pynetdicom: refuse here, not mid-transfer
        self._housekeeping()
        handlers = [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        ae = self._make_ae()
        server_class = type(
            "BoundServer",
            (_Server if self.config.shared_socket is None else _SiblingServer,),
            {
                "listener": self,
                "owner": self,
                "tls_context": self.config.ssl_context,
                "handshake_timeout": self.config.handshake_timeout,
            },
        )
        server = ae.make_server(
            (self.config.bind, self.config.port),
            ae_title=self.config.ae_title,
            evt_handlers=handlers,  # type: ignore[arg-type]
            server_class=server_class,
            request_handler=ConnectionHandler,
        )
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        register_server(ae, server)
        self._server = server  # type: ignore[assignment]
        logger.info(
            "listening as %s on %s:%d%s",
            self.config.ae_title,
            self.config.bind,
            self.port,
            " (TLS)" if self.config.ssl_context else "",
        )

    def stop(self) -> None:
        """Stop accepting, abort open associations and close the server."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            live = list(self._live.values())
        for assoc in live:
            if assoc.is_established:
                assoc.abort(block=False)
            else:  # not associated yet: nothing to abort, just hang up
                wrapper = assoc.dul.socket
                if wrapper is not None and wrapper.socket is not None:
                    wrapper.close()
        deadline = time.monotonic() + 5
        for assoc in live:
            assoc.join(timeout=max(0.0, deadline - time.monotonic()))

    def _housekeeping(self) -> None:
        """Remove incoming/ files that no association has written to for a long time."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_INTERVAL
        # A live transfer writes each P-DATA as it arrives, and an association idle for longer
        # than the network timeout is aborted, so such a file has no writer left.
        idle = 2 * max(self.config.network_timeout, self.config.dimse_timeout) + 60
        for path in sweep_stale(self.spool.incoming, older_than=idle):
            logger.warning("removed %s from incoming/: no writer for %.0f s", path.name, idle)

    def _beat(self) -> None:
        """Renew the heartbeat file (at most once a second): the accept loop is alive."""
        path = self.config.heartbeat_file
        now = time.monotonic()
        if path is None or now < self._next_beat:
            return
        self._next_beat = now + 1.0
        try:
            path.touch()
        except OSError as exc:
            logger.warning("could not renew the heartbeat file %s: %s", path, exc)

    # -- connections (called by the server, see dicom_node.pynetdicom_seam.server) ----------
    def admit_connection(self, address: tuple[str, int]) -> bool:
        with self._lock:
            self._connections += 1
            held = self._connections
        if held <= self.config.max_connections:
            return True
        peer = PeerInfo("", self.config.ae_title, str(address[0]), int(address[1]))
        self._refuse(
            peer, f"{held - 1} connections already open (limit {self.config.max_connections})"
        )
        return False

    def handshake_failed(self, address: tuple[str, int], reason: str) -> None:
        peer = PeerInfo("", self.config.ae_title, str(address[0]), int(address[1]), tls=True)
        self._refuse(peer, f"TLS handshake failed: {reason}")

    def connection_opened(self, assoc: Any) -> None:
        address = assoc.requestor.address_info
        install_reader(
            assoc.dul,
            self._limits,
            on_pdata=self._check_space_in_flight,
            peer=f"{address.address}:{address.port}",
        )
        files = watch_datasets(assoc)
        with self._lock:
            self._live[id(assoc)] = assoc
            self._files[id(assoc)] = files

    def connection_finished(self, assoc: Any | None, address: tuple[str, int]) -> None:
        with self._lock:
            self._connections -= 1
        if assoc is None:
            return
        with self._lock:
            self._live.pop(id(assoc), None)
            files = self._files.pop(id(assoc), set())
            assoc_id = self._associations.pop(id(assoc), None)
            self._open.discard(id(assoc))
        for path in discard_partial_datasets(assoc, files, self.spool.incoming):
            logger.warning(
                "association from %s:%s ended mid-transfer; removed %s",
                address[0],
                address[1],
                path.name,
            )
        if assoc_id is None:
            return
        outcome = "released" if assoc.is_released else "aborted" if assoc.is_aborted else "closed"
        try:
            self.recorder.association_ended(assoc_id, outcome)
        except Exception:
            logger.exception("could not record the end of association %d", assoc_id)

    def _check_space_in_flight(self, dul: Any, length: int) -> None:
        """Before a P-DATA-TF is written into incoming/: would it cross the watermark?

        Asked once per :data:`_SPACE_CHECK_BYTES` received, not per PDU (a ``statfs`` each):
        the watermark may be crossed by at most that much before writing stops.
        """
        unchecked = getattr(dul, "_cxr_unchecked", 0) + length
        if unchecked < _SPACE_CHECK_BYTES:
            dul._cxr_unchecked = unchecked
            return
        dul._cxr_unchecked = 0
        if receiving_into(dul) is None:
            return
        try:
            self.spool.check_space(unchecked)
        except LowDiskSpaceError as exc:
            # Stop writing; the C-STORE is answered 0xA700 once the rest has arrived.
            stop_receiving(dul, str(exc))
            logger.warning("stopped receiving a dataset into incoming/: %s", exc)

    # -- associations -------------------------------------------------------------------------
    def _peer(self, event: evt.Event) -> PeerInfo:
        req = event.assoc.requestor
        # At EVT_REQUESTED the AE titles are only in the A-ASSOCIATE-RQ primitive.
        primitive = req.primitive
        calling = primitive.calling_ae_title if primitive is not None else req.ae_title
        called = (
            primitive.called_ae_title if primitive is not None else event.assoc.acceptor.ae_title
        )
        return PeerInfo(
            calling_ae=str(calling or "").strip(),
            called_ae=str(called or "").strip(),
            host=str(req.address),
            port=int(req.port or 0),
            tls=self.config.ssl_context is not None,
        )

    def _rejection_reason(self, peer: PeerInfo) -> tuple[str, tuple[int, int, int]] | None:
        allowed = self.config.allowed_calling_aets
        if allowed and peer.calling_ae not in allowed:
            return f"calling AE {peer.calling_ae!r} is not in the allow-list", (0x01, 0x01, 0x03)
        if self.config.require_called_ae and peer.called_ae != self.config.ae_title:
            return (
                f"called AE {peer.called_ae!r} is not ours ({self.config.ae_title!r})",
                (0x01, 0x01, 0x07),
            )
        with self._lock:
            active = len(self._open)
        if active >= self.config.max_associations:
            return (
                f"{active} associations already open (limit {self.config.max_associations})",
                (0x02, 0x03, 0x02),
            )
        try:
            self.spool.check_space()
        except LowDiskSpaceError as exc:
            return f"low disk space: {exc}", (0x02, 0x03, 0x01)
        return None

    def _refuse(self, peer: PeerInfo, reason: str) -> None:
        logger.warning("refused %s@%s:%d: %s", peer.calling_ae or "?", peer.host, peer.port, reason)
        try:
            self.recorder.association_rejected(peer, reason)
        except Exception:
            logger.exception("could not record the refusal of %s:%d", peer.host, peer.port)

    def _on_requested(self, event: evt.Event) -> None:
        # pynetdicom sets the acceptor's AE title from the request before this event.
        peer = self._peer(event)
        verdict = self._rejection_reason(peer)
        if verdict is None:
            return
        reason, (result, source, diagnostic) = verdict
        self._refuse(peer, reason)
        event.assoc.acse.send_reject(result, source, diagnostic)
        # As pynetdicom does after its own rejections: let the DUL flush the A-ASSOCIATE-RJ
        # before the server closes the socket, or the peer sees an abort instead.
        event.assoc.kill()

    def _association_id(self, event: evt.Event) -> int:
        key = id(event.assoc)
        with self._lock:
            known = self._associations.get(key)
        if known is not None:
            return known
        assoc_id = self.recorder.association_started(self._peer(event))
        with self._lock:
            self._associations[key] = assoc_id
        return assoc_id

    def _on_accepted(self, event: evt.Event) -> None:
        with self._lock:
            self._open.add(id(event.assoc))
        try:
            self._association_id(event)
        except Exception:
            # The first C-STORE retries, and fails with 0xA700 if the database is still down.
            logger.exception("could not record association from %s", event.assoc.requestor.address)

    # -- DIMSE ----------------------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return SUCCESS

    def _fail(
        self, assoc_id: int | None, sop_uid: str, status: int, reason: str, *, exc: bool = False
    ) -> int:
        return self.intake.fail(assoc_id, sop_uid, status, reason, exc=exc)

    def _on_store(self, event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        assoc_id: int | None = None
        try:
            assoc_id = self._association_id(event)
            return self._store(event, assoc_id, sop_uid)
        except Exception as exc:
            status = OUT_OF_RESOURCES if assoc_id is None else PROCESSING_FAILURE
            return self._fail(assoc_id, sop_uid, status, f"internal error: {exc}", exc=True)
        finally:
            # The file is now committed or pynetdicom deletes it: stop watching it.
            received = request_file(request)
            if received is not None:
                self._files.get(id(event.assoc), set()).discard(received)

    def _store(self, event: evt.Event, assoc_id: int, command_sop_uid: str) -> int:
        dropped = dropped_reason(event.request)
        if dropped is not None:
            return self._fail(assoc_id, command_sop_uid, OUT_OF_RESOURCES, dropped)
        if not has_dataset(event.request):
            # The command said no dataset follows (CommandDataSetType 0x0101).
            reason = "the C-STORE request carries no dataset"
            return self._fail(assoc_id, command_sop_uid, CANNOT_UNDERSTAND, reason)
        return self.intake.accept(event.dataset_path, assoc_id, command_sop_uid)
