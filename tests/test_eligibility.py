from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node.eligibility import OUR_MANUFACTURER, decide, describe_rules
from dicom_node.uids import DEFAULT_UID_ROOT, new_uid
from tests import factories
from tests.services import shared_file

ROOT = DEFAULT_UID_ROOT


def _code(value: str, meaning: str, scheme: str = "SCT") -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return Sequence([item])


@pytest.mark.parametrize(
    "kwargs, eligible, rule",
    [
        ({"modality": "DX"}, True, "view-position"),
        ({"modality": "CR"}, True, "view-position"),
        ({"modality": "DX", "body_part": "THORAX"}, True, "view-position"),
        ({"view_position": "AP"}, False, "view-position"),
        ({"view_position": "LL"}, False, "view-position"),
        ({"body_part": "HAND"}, False, "body-part"),
        ({"modality": "MG"}, False, "modality"),
        ({"view_position": None, "SeriesDescription": "Chest P-A"}, True, "description"),
        (
            {"view_position": None, "SeriesDescription": "THORAX POSTERO-ANTERIOR"},
            True,
            "description",
        ),
        ({"view_position": None, "SeriesDescription": "CHEST LAT"}, False, "description"),
        (
            {
                "view_position": None,
                "StudyDescription": "CHEST PA AND LAT",
                "ProtocolName": "PA erect",
            },
            True,
            "description",
        ),
        ({"view_position": None}, False, "view-unknown"),
        (
            {"view_position": None, "body_part": None, "SeriesDescription": "PA"},
            False,
            "body-part-unknown",
        ),
        ({"PresentationIntentType": "FOR PROCESSING"}, False, "for-processing"),
        ({"PatientSpeciesDescription": "Canis lupus familiaris"}, False, "non-human"),
        ({"PatientSpeciesDescription": "Homo sapiens"}, True, "view-position"),
    ],
)
def test_rule_table(kwargs: dict, eligible: bool, rule: str) -> None:
    decision = decide(factories.radiograph(**kwargs), uid_root=ROOT)
    assert (decision.eligible, decision.rule) == (eligible, rule), decision.reason
    assert decision.reason


def test_view_code_sequence() -> None:
    pa = factories.radiograph(view_position=None)
    pa.ViewCodeSequence = _code("399348003", "postero-anterior")
    assert decide(pa, uid_root=ROOT).rule == "view-code"
    assert decide(pa, uid_root=ROOT).eligible
    lateral = factories.radiograph(view_position=None)
    lateral.ViewCodeSequence = _code("399173006", "left lateral")
    d = decide(lateral, uid_root=ROOT)
    assert not d.eligible and "left lateral" in d.reason


def test_species_code_and_anatomic_region() -> None:
    dog = factories.radiograph()
    dog.PatientSpeciesCodeSequence = _code("448771007", "Canis familiaris")
    assert decide(dog, uid_root=ROOT).rule == "non-human"
    region = factories.radiograph(body_part=None)
    region.AnatomicRegionSequence = _code("43799004", "Chest")
    assert decide(region, uid_root=ROOT).eligible
    region.AnatomicRegionSequence = _code("85050009", "Humerus")
    assert decide(region, uid_root=ROOT).rule == "body-part"


def test_assume_pa_chest_accepts_untagged_images_only() -> None:
    untagged = factories.radiograph(view_position=None, body_part=None)
    del untagged.AnatomicRegionSequence
    assert not decide(untagged, uid_root=ROOT).eligible
    assumed = decide(untagged, uid_root=ROOT, assume_pa_chest=True)
    assert assumed.eligible and assumed.rule == "assumed"
    # An explicit AP stays ineligible whatever the flag says.
    ap = factories.radiograph(view_position="AP")
    assert not decide(ap, uid_root=ROOT, assume_pa_chest=True).eligible


def test_non_images_and_ct() -> None:
    assert decide(factories.ct_slice(), uid_root=ROOT).rule == "modality"
    assert decide(factories.structured_report(), uid_root=ROOT).rule == "modality"


def test_loop_protection() -> None:
    by_manufacturer = factories.radiograph(Manufacturer=OUR_MANUFACTURER)
    assert decide(by_manufacturer, uid_root=ROOT).rule == "own-output"
    by_uid = factories.radiograph(sop_uid=new_uid(ROOT))
    assert decide(by_uid, uid_root=ROOT).rule == "own-output"
    by_series = factories.radiograph(series_uid=new_uid(ROOT))
    assert decide(by_series, uid_root=ROOT).rule == "own-output"
    by_derivation = factories.radiograph(DerivationDescription="Grad-CAM overlay by cxr-triage")
    assert decide(by_derivation, uid_root=ROOT).rule == "own-output"


@pytest.mark.parametrize(
    "name, eligible, rule",
    [
        ("cr_pa_chest_jpeg_baseline.dcm", True, "view-position"),
        ("cr_pa_chest_monochrome1.dcm", True, "view-position"),
        ("dx_chest_no_view_tags.dcm", False, "view-unknown"),
        ("dx_canine_lateral_thorax.dcm", False, "non-human"),
    ],
)
def test_real_files(name: str, eligible: bool, rule: str) -> None:
    ds = pydicom.dcmread(shared_file(name), stop_before_pixels=True)
    d = decide(ds, uid_root=ROOT)
    assert (d.eligible, d.rule) == (eligible, rule), d.reason


def test_docs_list_every_rule() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "eligibility.md").read_text()
    for rule in describe_rules():
        assert f"`{rule}`" in doc, rule
