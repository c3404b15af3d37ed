"""Pull studies from a PACS: C-FIND at study level, then C-MOVE each one to our node.

A hospital's archive holds the studies a node never had pushed to it: the weeks before go-live
for local validation, a ward's backlog. ``cxr-triage pull`` asks the PACS for chest studies by
modality and date (C-FIND, Study Root), then asks it to send each one to our node's AE title
(C-MOVE), so every pulled study takes the path a pushed one does: eligibility, spool,
completion, results. The PACS must know our node's AE title as a move destination.

Both calls are bounded: a query that matches more than ``max_matches`` studies is cancelled
with an error that says to narrow it (a PACS answering a whole year of CR is a mistake, not a
job), and ``cxr-triage pull`` paces the moves so a pull does not starve the modalities.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_node.addresses import Destination
from dicom_node.sender import SenderOptions, associate, requestor

logger = logging.getLogger(__name__)

#: Chest radiographs are CR or DX; a study may hold other series too (ModalitiesInStudy).
DEFAULT_MODALITIES = ("CR", "DX")
DEFAULT_MAX_MATCHES = 5000

_PENDING = (0xFF00, 0xFF01)


class PullError(RuntimeError):
    """A query or retrieve the PACS refused or that cannot be done, with the reason."""


@dataclass(frozen=True)
class StudyMatch:
    """One study the PACS reported."""

    study_instance_uid: str
    study_date: str = ""
    modalities: str = ""
    patient_id: str = ""
    accession_number: str = ""
    instances: int | None = None


@dataclass(frozen=True)
class MoveResult:
    """The final C-MOVE response's counts (None where the PACS gave none)."""

    status: int
    completed: int | None
    failed: int | None
    warning: int | None

    @property
    def ok(self) -> bool:
        return self.status in (0x0000, 0xB000) and not self.failed


def _date_range(since: date | None, until: date | None) -> str:
    """DICOM date range matching: ``20261201-20261204``, open at either end; "" for any date."""
    if since is None and until is None:
        return ""
    left = since.strftime("%Y%m%d") if since else ""
    right = until.strftime("%Y%m%d") if until else ""
    return f"{left}-{right}"


def study_query(modality: str, since: date | None, until: date | None) -> Dataset:
    """The C-FIND identifier: the return keys we use, matching on modality and date."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.StudyDate = _date_range(since, until)
    ds.ModalitiesInStudy = modality
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.NumberOfStudyRelatedInstances = ""
    return ds


def _match(identifier: Dataset) -> StudyMatch | None:
    uid = str(identifier.get("StudyInstanceUID", "") or "").strip()
    if not uid:
        return None
    count = identifier.get("NumberOfStudyRelatedInstances")
    modalities = identifier.get("ModalitiesInStudy", "")
    if not isinstance(modalities, str):
        modalities = "\\".join(str(m) for m in modalities)
    return StudyMatch(
        study_instance_uid=uid,
        study_date=str(identifier.get("StudyDate", "") or ""),
        modalities=modalities,
        patient_id=str(identifier.get("PatientID", "") or ""),
        accession_number=str(identifier.get("AccessionNumber", "") or ""),
        instances=int(count) if count not in (None, "") else None,
    )


def find_studies(
    pacs: Destination,
    options: SenderOptions,
    *,
    modalities: Iterable[str] = DEFAULT_MODALITIES,
    since: date | None = None,
    until: date | None = None,
    max_matches: int = DEFAULT_MAX_MATCHES,
) -> list[StudyMatch]:
    """The studies with any of ``modalities`` in the date range, one query per modality.

    Raises
    ------
    AssociationFailed
        If the PACS cannot be reached or refuses the association.
    PullError
        If the PACS refuses the query, or more than ``max_matches`` studies match (the query
        is cancelled: narrow the date range).
    """
    ae = requestor(options)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    found: dict[str, StudyMatch] = {}
    assoc = associate(ae, pacs, options)
    try:
        for msg_id, modality in enumerate(modalities, start=1):
            responses = assoc.send_c_find(
                study_query(modality, since, until),
                StudyRootQueryRetrieveInformationModelFind,
                msg_id=msg_id,
            )
            for status, identifier in responses:
                if not status:
                    raise PullError(f"{pacs} did not answer the C-FIND (timeout or aborted)")
                code = int(status.Status)
                if code not in _PENDING:
                    if code not in (0x0000, 0xFE00):
                        raise PullError(f"{pacs} refused the C-FIND: status 0x{code:04X}")
                    break
                match = _match(identifier) if identifier is not None else None
                if match is not None:
                    found.setdefault(match.study_instance_uid, match)
                if len(found) > max_matches:
                    # Stop the PACS sending the rest (C-CANCEL), then drain what it sent.
                    assoc.send_c_cancel(msg_id, None, StudyRootQueryRetrieveInformationModelFind)
                    _drain(responses)
                    raise PullError(
                        f"more than {max_matches} studies match on {pacs}: narrow the date "
                        "range (--since/--until) or raise --max-matches"
                    )
    finally:
        if assoc.is_established:
            assoc.release()
    return sorted(found.values(), key=lambda m: (m.study_date, m.study_instance_uid))


def _drain(responses: Iterator[tuple[Dataset, Dataset | None]], limit: int = 100_000) -> None:
    """Read the rest of a cancelled C-FIND's responses (bounded), so the association is clean."""
    for n, (status, _) in enumerate(responses):
        if not status or int(status.Status) not in _PENDING or n >= limit:
            return


def move_study(
    pacs: Destination, options: SenderOptions, study_instance_uid: str, move_to: str
) -> MoveResult:
    """Ask the PACS to send one study to the AE title ``move_to`` (our node).

    Raises
    ------
    AssociationFailed
        If the PACS cannot be reached or refuses the association.
    PullError
        If the PACS does not answer the C-MOVE, or does not know ``move_to`` (0xA801).
    """
    ae = requestor(options)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    assoc = associate(ae, pacs, options)
    final: Dataset | None = None
    try:
        for status, _ in assoc.send_c_move(
            query, move_to, StudyRootQueryRetrieveInformationModelMove
        ):
            if not status:
                raise PullError(f"{pacs} did not answer the C-MOVE of {study_instance_uid}")
            if int(status.Status) not in _PENDING:
                final = status
    finally:
        if assoc.is_established:
            assoc.release()
    if final is None:
        raise PullError(f"{pacs} ended the C-MOVE of {study_instance_uid} without a final status")
    code = int(final.Status)
    if code == 0xA801:
        raise PullError(f"{pacs} does not know the move destination {move_to!r} (0xA801)")

    def count(name: str) -> int | None:
        value = final.get(name)
        return int(value) if value not in (None, "") else None

    return MoveResult(
        code,
        count("NumberOfCompletedSuboperations"),
        count("NumberOfFailedSuboperations"),
        count("NumberOfWarningSuboperations"),
    )
