"""C-STORE and C-ECHO SCU: send files or datasets to a DICOM peer."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.addresses import Destination
from dicom_node.pynetdicom_seam.requestor import leave_responses_to_the_sender
from dicom_node.pynetdicom_seam.sockets import tune_socket

logger = logging.getLogger(__name__)

#: pynetdicom's limit on presentation contexts proposed in one association.
_MAX_CONTEXTS = 128
#: Storage statuses that mean the peer kept the instance (success and the B000-B007 warnings).
_OK_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class AssociationFailed(ConnectionError):
    """The peer could not be reached, or rejected or aborted the association."""


@dataclass
class SendResult:
    """Outcome for one file or dataset."""

    source: str
    sop_instance_uid: str
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in _OK_STATUSES

    @property
    def label(self) -> str:
        if self.status is not None:
            return f"0x{self.status:04X}"
        return "error"


@dataclass
class SendSummary:
    """Results of a send, in order."""

    results: list[SendResult] = field(default_factory=list)

    @classmethod
    def each(
        cls, paths: Iterable[Path | str], send_one: Callable[[Path], SendResult]
    ) -> SendSummary:
        """``send_one`` for every path, in order: senders that make one request per file
        (STOW-RS, HL7, FHIR)."""
        return cls([send_one(Path(p)) for p in paths])

    @property
    def sent(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.sent

    def counts(self) -> dict[str, int]:
        """Number of results per status label (``0x0000``, ``0xA700``, ``error`` ...)."""
        out: dict[str, int] = {}
        for r in self.results:
            out[r.label] = out.get(r.label, 0) + 1
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class SenderOptions:
    """How the SCU associates."""

    calling_ae: str = "CXR_TRIAGE"
    max_pdu: int = 1_048_576
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    connection_timeout: float = 10.0
    ssl_context: ssl.SSLContext | None = None


def requestor(options: SenderOptions) -> AE:
    ae = AE(ae_title=options.calling_ae)
    ae.maximum_pdu_size = options.max_pdu
    ae.acse_timeout = options.acse_timeout
    ae.dimse_timeout = options.dimse_timeout
    ae.network_timeout = options.network_timeout
    ae.connection_timeout = options.connection_timeout
    return ae


def associate(ae: AE, dest: Destination, options: SenderOptions) -> Association:
    # The host goes to the handshake so that the certificate is checked against it.
    tls = (options.ssl_context, dest.host) if options.ssl_context else None
    connected: list[bool] = []
    try:
        assoc = ae.associate(
            dest.host,
            dest.port,
            ae_title=dest.ae_title,
            max_pdu=options.max_pdu,
            tls_args=tls,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, tune_socket),
                (evt.EVT_CONN_OPEN, lambda _event: connected.append(True)),
            ],
        )
    except socket.gaierror as exc:
        raise AssociationFailed(f"host {dest.host!r} not found ({exc.strerror})") from exc
    except (OSError, ValueError) as exc:
        raise AssociationFailed(f"could not connect to {dest}: {exc}") from exc
    if assoc.is_established:
        leave_responses_to_the_sender(assoc)
        return assoc
    if not connected:
        raise AssociationFailed(
            f"could not connect to {dest} (connection refused, or no answer within "
            f"{options.connection_timeout:g} s)"
        )
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        p = assoc.acceptor.primitive
        raise AssociationFailed(f"{dest} rejected the association: {p.reason_str}")
    if assoc.is_aborted:
        raise AssociationFailed(f"{dest} aborted the association")
    raise AssociationFailed(f"could not associate with {dest} (no answer or connection refused)")


def echo(dest: Destination, options: SenderOptions | None = None) -> int:
    """Send a C-ECHO and return its status.

    Raises
    ------
    AssociationFailed
        If no association could be made.
    """
    options = options or SenderOptions()
    ae = requestor(options)
    ae.add_requested_context(Verification)
    assoc = associate(ae, dest, options)
    try:
        rsp = assoc.send_c_echo()
        if not rsp:
            raise AssociationFailed(f"{dest} did not answer the C-ECHO")
        return int(rsp.Status)
    finally:
        if assoc.is_established:
            assoc.release()


def iter_dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Yield files under ``paths`` (files as given, folders recursively in name order)."""
    for path in paths:
        if path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.is_file())
        else:
            yield path


@dataclass(frozen=True)
class _Item:
    source: str
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    payload: Path | Dataset


def _describe_file(path: Path) -> _Item:
    meta = read_file_meta_info(path)
    return _Item(
        source=str(path),
        sop_class=str(meta.MediaStorageSOPClassUID),
        sop_instance=str(meta.MediaStorageSOPInstanceUID),
        transfer_syntax=str(meta.TransferSyntaxUID),
        payload=path,
    )


def _describe_dataset(ds: Dataset) -> _Item:
    return _Item(
        source=f"dataset {ds.SOPInstanceUID}",
        sop_class=str(ds.SOPClassUID),
        sop_instance=str(ds.SOPInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        payload=ds,
    )


def _batches(items: list[_Item]) -> Iterator[list[_Item]]:
    """Split items into runs whose (SOP class, transfer syntax) pairs fit one association."""
    batch: list[_Item] = []
    contexts: set[tuple[str, str]] = set()
    for item in items:
        key = (item.sop_class, item.transfer_syntax)
        if key not in contexts and len(contexts) == _MAX_CONTEXTS:
            yield batch
            batch, contexts = [], set()
        contexts.add(key)
        batch.append(item)
    if batch:
        yield batch


def _payload_for(item: _Item, assoc: Association) -> Path | Dataset:
    """The item as it can go over this association: as is, or decompressed if only that fits."""
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
    if (item.sop_class, item.transfer_syntax) in accepted:
        return item.payload
    if (item.sop_class, ExplicitVRLittleEndian) not in accepted:
        return item.payload  # pynetdicom then reports that no context fits
    ds = dcmread(item.payload) if isinstance(item.payload, Path) else item.payload.copy()
    # Same instance, another transfer syntax: it keeps its UID (pydicom would make a new one).
    ds.decompress(generate_instance_uid=False)
    return ds


def _send_items(
    items: list[_Item],
    dest: Destination,
    options: SenderOptions,
    on_result: Callable[[SendResult], None] | None,
) -> SendSummary:
    summary = SendSummary()

    def done(result: SendResult) -> None:
        summary.results.append(result)
        if on_result is not None:
            on_result(result)

    for batch in _batches(items):
        ae = requestor(options)
        wanted = {(i.sop_class, i.transfer_syntax) for i in batch}
        # Peers that take no compressed syntax get the object decompressed instead.
        wanted |= {
            (i.sop_class, ExplicitVRLittleEndian)
            for i in batch
            if UID(i.transfer_syntax).is_compressed
        }
        for sop_class, ts in sorted(wanted):
            ae.add_requested_context(sop_class, [ts])
        try:
            assoc = associate(ae, dest, options)
        except AssociationFailed as exc:
            for item in batch:
                done(SendResult(item.source, item.sop_instance, None, str(exc)))
            continue
        try:
            for item in batch:
                if not assoc.is_established:
                    done(SendResult(item.source, item.sop_instance, None, "association lost"))
                    continue
                try:
                    rsp = assoc.send_c_store(_payload_for(item, assoc))
                except (ValueError, OSError) as exc:  # e.g. no accepted presentation context
                    done(SendResult(item.source, item.sop_instance, None, str(exc)))
                    continue
                if rsp and "Status" in rsp:
                    comment = str(rsp.get("ErrorComment", "")) or None
                    done(SendResult(item.source, item.sop_instance, int(rsp.Status), comment))
                else:
                    reason = "no response (timeout or connection lost)"
                    done(SendResult(item.source, item.sop_instance, None, reason))
        finally:
            if assoc.is_established:
                assoc.release()
    return summary


def send_files(
    paths: Iterable[Path],
    dest: Destination,
    options: SenderOptions | None = None,
    on_result: Callable[[SendResult], None] | None = None,
) -> SendSummary:
    """C-STORE files to ``dest``, each in its own transfer syntax, without decoding them.

    Files that are not DICOM Part 10 files are reported as errors, not sent.
    """
    options = options or SenderOptions()
    items: list[_Item] = []
    summary = SendSummary()
    for path in paths:
        try:
            items.append(_describe_file(path))
        except Exception as exc:
            result = SendResult(str(path), "", None, f"not a DICOM file: {exc}")
            summary.results.append(result)
            if on_result is not None:
                on_result(result)
    summary.results.extend(_send_items(items, dest, options, on_result).results)
    return summary


def send_datasets(
    datasets: Iterable[Dataset],
    dest: Destination,
    options: SenderOptions | None = None,
    on_result: Callable[[SendResult], None] | None = None,
) -> SendSummary:
    """C-STORE in-memory datasets (each needs ``file_meta.TransferSyntaxUID``) to ``dest``."""
    items = [_describe_dataset(ds) for ds in datasets]
    return _send_items(items, dest, options or SenderOptions(), on_result)
