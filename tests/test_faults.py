"""Faults injected into real processes: every acknowledged instance is delivered exactly once
or held where the audit shows it, within a bounded time (see tests/faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests import faults
from tests.services import SHARED_DICOM


def _shared() -> Path:
    if not (SHARED_DICOM / faults.SOURCE_IMAGE).is_file():
        pytest.skip(f"{SHARED_DICOM} is absent: the faults need real radiographs to classify")
    return SHARED_DICOM


#: (delivered, held) of the acknowledged instances after each fault.
EXPECTED = {
    "listener_killed": (5, 0),
    "worker_killed": (3, 0),
    "redis_restarted": (4, 0),
    "pacs_down": (4, 0),
    # The PACS has its copy; the study waits in dead_letter for the other destination.
    "unresolvable_destination": (2, 2),
    "disk_full": (4, 0),
    "worker_hung": (3, 0),
    "slow_pacs": (1, 0),
    "postgres_outage": (4, 0),
}


@pytest.mark.slow
@pytest.mark.dcmtk
@pytest.mark.redis
@pytest.mark.parametrize("name", list(faults.SCENARIOS))
def test_fault(name: str, tmp_path: Path, pg_url: str) -> None:
    tally = faults.SCENARIOS[name](tmp_path, pg_url, _shared())
    assert tally.lost == 0, tally
    assert tally.duplicated == 0, tally
    if name in ("slow_pacs", "worker_hung"):
        assert tally.resent == 0, tally  # slow or hung work is never sent a second time
    assert (tally.delivered, tally.held) == EXPECTED[name], tally
    assert tally.unaccounted == [], tally  # `audit reconcile` agrees


def test_every_scenario_has_an_expectation() -> None:
    assert set(EXPECTED) == set(faults.SCENARIOS)


def _result(modality: str, uid: str, inputs: list[str]) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.StudyInstanceUID, ds.SOPInstanceUID = modality, "1.2.3", uid
    refs = []
    for source in inputs:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = (
            "1.2.840.10008.5.1.4.1.1.1",
            source,
        )
        refs.append(ref)
    if modality == "SR":
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
        series = Dataset()
        series.ReferencedSOPSequence = refs
        study = Dataset()
        study.ReferencedSeriesSequence = [series]
        ds.CurrentRequestedProcedureEvidenceSequence = [study]
    else:
        ds.SourceImageSequence = refs
    return ds


def test_the_pacs_count_tells_a_duplicate_from_a_resend_and_a_revision() -> None:
    first = [_result("OT", "9.1", ["1"]), _result("SR", "9.2", ["1"])]
    assert faults.pacs_counts(first) == ({"1"}, 0, 0)
    revision = [_result("OT", "9.3", ["2"]), _result("SR", "9.4", ["1", "2"])]
    assert faults.pacs_counts(first + revision) == ({"1", "2"}, 0, 0)
    assert faults.pacs_counts([*first, first[0]]) == ({"1"}, 0, 1)  # same UIDs again
    again = [_result("OT", "9.5", ["1"]), _result("SR", "9.6", ["1"])]
    assert faults.pacs_counts(first + again) == ({"1"}, 2, 0)  # same inputs, new UIDs
