"""The small interfaces the listener calls to record what it receives.

The application (``worker``) implements :class:`NodeRecorder` over its database and hands an
instance to :class:`dicom_node.listener.Listener` when it starts it; ``dicom_node`` itself never
imports the database layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dicom_node.eligibility import Decision


class RecordRefusedError(ValueError):
    """The database refuses this instance's values for good (a retry would fail the same way)."""


@dataclass(frozen=True)
class PeerInfo:
    """Who is on the other end of an association."""

    calling_ae: str
    called_ae: str
    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance acknowledged, or about to be, by the C-STORE SCP."""

    association_id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    accession_number: str
    patient_id: str
    spool_path: str | None
    size_bytes: int
    decision: Decision
    #: The same bytes as the copy already in the spool (a resend): nothing changes downstream.
    duplicate: bool = False


class NodeRecorder(Protocol):
    """Durable record of associations, instances and rejections.

    Every method commits before returning. ``instance_received`` must raise if the row could not
    be committed: the listener then answers with a failure status instead of acknowledging.
    """

    def association_started(self, peer: PeerInfo) -> int:
        """Record an accepted association; return its id."""
        ...

    def association_ended(self, association_id: int, outcome: str) -> None:
        """Record that an association ended (``released``, ``aborted`` or ``closed``)."""
        ...

    def association_rejected(self, peer: PeerInfo, reason: str) -> None:
        """Record an association (or TLS handshake) that was refused, and why."""
        ...

    def instance_received(self, instance: ReceivedInstance) -> None:
        """Record an instance; raise if it could not be committed.

        Raise :class:`RecordRefusedError` when the values themselves can never be stored, so
        the peer is told not to retry; any other exception is taken as transient.
        """
        ...

    def instance_failed(
        self, association_id: int | None, sop_instance_uid: str, status: int, reason: str
    ) -> None:
        """Record an instance answered with a failure status (best effort)."""
        ...
