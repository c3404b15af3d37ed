"""One received instance, from a C-STORE or a STOW-RS part: checked, spooled, recorded.

Both ways in share this path, so an instance gets the same checks, eligibility decision,
durability (fsync into the spool, then the committed row, before the status) and idempotency
(a re-send of what we hold is a duplicate receipt) whichever way it came. The caller answers
with the DIMSE status returned: C-STORE as it is, STOW-RS as a failure reason.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from dicom_node.content import same_content
from dicom_node.eligibility import decide
from dicom_node.integrity import MalformedDatasetError, read_header_checked, recorded_text
from dicom_node.interfaces import NodeRecorder, ReceivedInstance, RecordRefusedError
from dicom_node.spool import LowDiskSpaceError, Spool
from dicom_node.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    INVALID_UID,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from dicom_node.uids import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)


@dataclass
class Intake:
    """Checks, spools and records received instances (see the module text)."""

    spool: Spool
    recorder: NodeRecorder
    uid_root: str
    assume_pa_chest: bool = False
    keep_ineligible: bool = False

    def fail(
        self, assoc_id: int | None, sop_uid: str, status: int, reason: str, *, exc: bool = False
    ) -> int:
        """Log and record a failed instance; return its status."""
        log = logger.exception if exc else logger.warning
        log("instance %s answered 0x%04X: %s", sop_uid[:64] or "?", status, reason)
        try:
            self.recorder.instance_failed(assoc_id, sop_uid[:64], status, reason)
        except Exception:
            logger.exception("could not record the failure of %s", sop_uid[:64])
        return status

    def accept(
        self,
        received: Path,
        assoc_id: int,
        command_sop_uid: str | None = None,
        study: str | None = None,
    ) -> int:
        """Check, spool and record the dataset file ``received``; return the status to answer.

        ``command_sop_uid`` is the C-STORE command's SOP Instance UID (the dataset must agree);
        ``study`` the study a STOW-RS request was addressed to (likewise). The caller removes
        ``received`` if it is still there afterwards.
        """
        label = command_sop_uid or ""
        size = received.stat().st_size
        try:
            self.spool.check_space(size)
        except LowDiskSpaceError as exc:
            return self.fail(assoc_id, label, OUT_OF_RESOURCES, str(exc))
        try:
            ds = read_header_checked(received)
        except MalformedDatasetError as exc:
            reason = f"malformed or truncated dataset: {exc}"
            return self.fail(assoc_id, label, CANNOT_UNDERSTAND, reason)
        try:
            study_uid = validate_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
            series_uid = validate_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
            sop_uid = validate_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
        except InvalidUIDError as exc:
            return self.fail(assoc_id, label, INVALID_UID, str(exc))
        if command_sop_uid is not None and sop_uid != command_sop_uid.rstrip("\x00 "):
            reason = f"dataset SOPInstanceUID {sop_uid} differs from the command's"
            return self.fail(assoc_id, label, DATASET_MISMATCH, reason)
        if study is not None and study_uid != study:
            reason = f"dataset StudyInstanceUID {study_uid} is not the study {study} it was sent to"
            return self.fail(assoc_id, sop_uid, DATASET_MISMATCH, reason)

        decision = decide(ds, uid_root=self.uid_root, assume_pa_chest=self.assume_pa_chest)
        try:
            record = ReceivedInstance(
                association_id=assoc_id,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                sop_instance_uid=sop_uid,
                sop_class_uid=recorded_text(ds, "SOPClassUID", 64),
                transfer_syntax_uid=recorded_text(ds.file_meta, "TransferSyntaxUID", 64),
                modality=recorded_text(ds, "Modality", 16),
                accession_number=recorded_text(ds, "AccessionNumber", 16),
                patient_id=recorded_text(ds, "PatientID", 64),
                spool_path=None,
                size_bytes=size,
                decision=decision,
            )
        except MalformedDatasetError as exc:
            return self.fail(assoc_id, sop_uid, CANNOT_UNDERSTAND, str(exc))

        location = None
        existed = False
        if decision.eligible or self.keep_ineligible:
            location = self.spool.location(study_uid, series_uid, sop_uid)
            existed = location.path.exists()
            source = received
            if received.parent != self.spool.incoming:
                # tempfile.tempdir names another spool (several nodes in one process, as in
                # tests): copy to our file system.
                fd, name = tempfile.mkstemp(dir=self.spool.incoming, suffix=".dcm")
                os.close(fd)
                shutil.copyfile(received, name)
                source = Path(name)
            if existed and (
                filecmp.cmp(source, location.path, shallow=False)
                or same_content(source, location.path)
            ):
                # A resend of what we hold (the same bytes, or the same pixels and public
                # attributes in another encoding): keep our copy, record only the receipt.
                if source != received:
                    source.unlink()
                record = replace(record, spool_path=location.relative, duplicate=True)
            else:
                try:
                    size = self.spool.commit(source, location)
                except OSError as exc:
                    reason = f"spool write failed: {exc}"
                    return self.fail(assoc_id, sop_uid, OUT_OF_RESOURCES, reason)
                record = replace(record, spool_path=location.relative, size_bytes=size)

        try:
            self.recorder.instance_received(record)
        except RecordRefusedError as exc:
            # The database will never take this dataset as it is: a retry cannot help.
            if location is not None and not existed:
                self.spool.remove(location)
            return self.fail(assoc_id, sop_uid, CANNOT_UNDERSTAND, f"not recordable: {exc}")
        except Exception as exc:
            # Not recorded, so not acknowledged: the peer keeps its copy and retries later.
            if location is not None and not existed:
                self.spool.remove(location)
            return self.fail(
                assoc_id, sop_uid, OUT_OF_RESOURCES, f"database write failed: {exc}", exc=True
            )
        logger.info(
            "stored %s (%s) from association %d: %s",
            sop_uid,
            "eligible" if decision.eligible else "skipped",
            assoc_id,
            decision.reason,
            extra={"study": study_uid},  # correlation id for structured logs
        )
        return SUCCESS
