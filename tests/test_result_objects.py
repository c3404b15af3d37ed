"""The Grad-CAM SC and the TID 1500 SR: built, written, read back, validated by dicom3tools."""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.eligibility import decide
from dicom_node.results import codes, wording
from dicom_node.results.algorithm import Algorithm
from dicom_node.results.inherited import TYPE2_INHERITED
from dicom_node.results.sc import build_gradcam_sc
from dicom_node.results.sr import ImageResult, build_report
from dicom_node.results.triage import Triage
from dicom_node.uids import DEFAULT_UID_ROOT, new_uid
from models.gradcam import colour_ramp
from tests import factories
from tests.services import SHARED_DICOM, require, shared_file

PROBS = {"normal": 0.08, "covid": 0.86, "pneumonia": 0.06}
T = {"covid": 0.5, "pneumonia": 0.5}
COVID = Triage("covid", "flagged", "urgent", 0.86, T, "model card")


def _report(sr: Any) -> hd.sr.MeasurementReport:
    """The TID 1500 content of an SR that ``hd.sr.srread`` read (typed as a sequence)."""
    return cast(hd.sr.MeasurementReport, sr.content)


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _overlay(src: pydicom.Dataset) -> np.ndarray:
    grey = src.pixel_array.astype(np.float32)
    grey = (255 * (grey - grey.min()) / max(1.0, float(grey.max() - grey.min()))).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _sc(src: pydicom.Dataset, overlay: np.ndarray | None = None, **kwargs: Any) -> hd.sc.SCImage:
    """The SC of ``src`` (its own pixels as the overlay unless given), with test identities."""
    values: dict[str, Any] = {
        "triage": COVID,
        "heatmap_label": "covid",
        "algorithm": Algorithm("cxr-test", "9.9", ""),
        "series_instance_uid": new_uid(),
        "sop_instance_uid": new_uid(),
        "instance_number": 1,
        **kwargs,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # single-component patient names
        return build_gradcam_sc(src, _overlay(src) if overlay is None else overlay, **values)


def _build(
    images: list[ImageResult],
    study: Triage,
    evidence: list[pydicom.Dataset],
    sop_instance_uid: str | None = None,
) -> hd.sr.ComprehensiveSR:
    """``build_report`` with the tests' algorithm and fresh UIDs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # single-component patient names
        return build_report(
            images,
            study,
            evidence=evidence,
            algorithm=Algorithm("cxr-test", "9.9", "ab" * 32),
            series_instance_uid=new_uid(),
            sop_instance_uid=sop_instance_uid or new_uid(),
            device_uid=new_uid(),
        )


def _read_back(sr: pydicom.Dataset) -> Any:
    """The SR written to bytes and read back by highdicom."""
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return hd.sr.srread(buf)


def _sr(
    src: pydicom.Dataset, sc: pydicom.Dataset, sop_instance_uid: str | None = None
) -> hd.sr.ComprehensiveSR:
    region = (10.0, 12.0, src.Columns - 10.0, src.Rows - 12.0)
    image = ImageResult(src, COVID, PROBS, region=region, heatmap=sc)
    return _build([image], COVID, [src, sc], sop_instance_uid)


@pytest.fixture(params=["synthetic", "real"])
def source(request: pytest.FixtureRequest) -> pydicom.Dataset:
    if request.param == "real":
        return pydicom.dcmread(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    return factories.radiograph(rows=400, columns=320, bits=12, StudyDescription="CHEST PA")


def test_secondary_capture(source: pydicom.Dataset) -> None:
    sc = _round_trip(_sc(source))
    assert sc.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SOPInstanceUID.startswith(DEFAULT_UID_ROOT)
    # The label strip is below the image: as wide, a little taller.
    assert (sc.Columns, sc.SamplesPerPixel) == (source.Columns, 3)
    assert source.Rows < sc.Rows < source.Rows * 1.4
    assert sc.Manufacturer == "cxr-triage" and sc.BurnedInAnnotation == "YES"
    assert sc.SeriesDescription == "AI URGENT covid 86.0% heatmap, not for diagnosis"
    assert sc.BodyPartExamined == source.BodyPartExamined
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # The image area is the overlay as given: no text on the lungs.
    image_area = sc.pixel_array[: source.Rows].astype(int)
    assert np.abs(image_area - _overlay(source).astype(int)).mean() < 3  # JPEG
    assert decide(sc, uid_root=DEFAULT_UID_ROOT).rule == "own-output"


def test_sc_refuses_a_mismatched_overlay(source: pydicom.Dataset) -> None:
    with pytest.raises(ValueError, match="Rows/Columns"):
        _sc(source, np.zeros((10, 20, 3), np.uint8))


def test_structured_report_content_tree(source: pydicom.Dataset) -> None:
    sc = _sc(source)
    sr = _read_back(_sr(source, sc))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.Manufacturer == "cxr-triage"
    assert decide(sr, uid_root=DEFAULT_UID_ROOT).rule in ("own-output", "modality")
    evidence = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence
        for i in s.ReferencedSeriesSequence
    }
    assert evidence == {source.SOPInstanceUID, sc.SOPInstanceUID}
    content = sr.ContentSequence
    names = [item.ConceptNameCodeSequence[0].CodeMeaning for item in content]
    assert "Procedure reported" in names
    proc = next(
        i for i in content if i.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"
    )
    assert proc.ConceptCodeSequence[0].CodeValue == codes.PROCEDURE_CHEST_XRAY.value
    report = _report(sr)
    assert report.get_planar_roi_measurement_groups() == []
    (first,) = report.get_image_measurement_groups()  # one group per image, no study group
    assert first.finding_type == codes.FINDING_CODES["covid"]
    measured = first.get_measurements()
    probs = {m.name.meaning: (m.value, m.unit.value) for m in measured}
    assert probs == {  # percent, one decimal: what a reader needs
        codes.PROBABILITY_CODES[k].meaning: (round(100 * v, 1), "%") for k, v in PROBS.items()
    }
    # A finding's probabilities hang from the lungs' outline on the source image; the first
    # also from the corner point where a viewer puts the text; the SC illustrates it.
    for n, m in enumerate(measured):
        regions = [i for i in m[0].ContentSequence if i.ValueType == "SCOORD"]
        purposes = [r.ConceptNameCodeSequence[0].CodeValue for r in regions]
        assert purposes == (["TEXT-ANCHOR", "260753009"] if n == 0 else ["260753009"])
        outline = regions[-1]
        assert outline.GraphicType == "POLYLINE"
        assert outline.GraphicData[:2] == pytest.approx([10.0, 12.0])
        assert outline.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
    shown = [i for i in first[0].ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in shown] == [
        source.SOPInstanceUID,  # the group's source image
        sc.SOPInstanceUID,  # illustration of the region
    ]
    image_values = {
        e.name.value: e[0].ConceptCodeSequence[0].CodeValue  # its CODE item
        for e in first.get_qualitative_evaluations()
    }
    assert image_values == {
        "TRIAGE-BAND": "10828004",  # SCT Positive: flagged
        "TRIAGE-PRIORITY": "URGENT",
        "111000": "123110",  # algorithm family: artificial intelligence
    }
    (line,) = [
        i.TextValue
        for i in first[0].ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"
    ]
    assert line == "AI URGENT: COVID-19 flagged, not for diagnosis"
    (evaluations,) = [c for c in content if c.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    study = {
        i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeValue
        for i in evaluations.ContentSequence
        if i.ValueType == "CODE"
    }
    assert study == {"121071": "840539006", "TRIAGE-BAND": "10828004", "TRIAGE-PRIORITY": "URGENT"}
    (summary,) = [t.TextValue for t in evaluations.ContentSequence if t.ValueType == "TEXT"]
    assert summary == (
        "AI triage, not for diagnosis: COVID-19 flagged: 86.0% (flag at 50.0%), priority "
        "URGENT; COVID-19 86.0%, Normal 8.0%, Pneumonia 6.0%; heatmaps show evidence for the "
        "class named on each, not an outline"
    )
    family = [
        i.ConceptCodeSequence[0].CodeValue
        for i in first[0].ContentSequence
        if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Family"
    ]
    assert family == ["123110"]
    algorithm = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
        for i in first[0].ContentSequence
        if i.ValueType == "TEXT"
    }
    assert algorithm["Algorithm Name"] == "cxr-test" and algorithm["Algorithm Version"] == "9.9"
    params = [
        i.TextValue
        for i in first[0].ContentSequence
        if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    assert params == [
        "threshold covid=0.5000",
        "threshold pneumonia=0.5000",
        "operating point=model card",
        f"weights sha256={'ab' * 32}",
    ]


@pytest.mark.dcmtk
def test_dicom3tools_and_dcmtk_accept_the_objects(tmp_path: Path) -> None:
    require(shutil.which("dciodvfy") is not None, "dicom3tools (dciodvfy) is not installed")
    require(shutil.which("dsrdump") is not None, "dcmtk (dsrdump) is not installed")
    src_path = shared_file("cr_pa_chest_jpeg_baseline.dcm")
    src = pydicom.dcmread(src_path)
    sc = _sc(src)
    files = {"sc": tmp_path / "sc.dcm", "sr": tmp_path / "sr.dcm"}
    sc.save_as(files["sc"], enforce_file_format=True)
    _sr(src, sc).save_as(files["sr"], enforce_file_format=True)
    for path in files.values():
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [
            line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")
        ]
        assert errors == [] and out.returncode == 0, errors
    dump = subprocess.run(["dsrdump", "-v", str(files["sr"])], capture_output=True, text=True)
    assert dump.returncode == 0 and "W:" not in dump.stderr and "E:" not in dump.stderr, dump.stderr
    assert "Triage priority" in dump.stdout and "COVID-19" in dump.stdout
    html = subprocess.run(["dsr2html", str(files["sr"])], capture_output=True, text=True).stdout
    assert "AI triage, not for diagnosis: COVID-19 flagged: 86.0%" in html
    assert "86.0 %" in html


def _samples() -> list[Any]:
    """Every real sample (ids for the report), and synthetic sources without optional tags."""
    real = sorted(SHARED_DICOM.glob("*.dcm")) if SHARED_DICOM.is_dir() else []
    return [
        *(pytest.param(p, id=p.stem) for p in real),
        pytest.param("no-body-part", id="synthetic-no-body-part"),
        pytest.param("bare-age", id="synthetic-bare-age"),
    ]


@pytest.mark.dcmtk
@pytest.mark.parametrize("sample", _samples())
@pytest.mark.filterwarnings(
    "ignore:Invalid value for VR AS:UserWarning"
)  # the bare "62", on purpose
def test_objects_from_every_sample_validate(sample: Path | str, tmp_path: Path) -> None:
    """dciodvfy on the SC and the SR, dcentvfy across source, SC and SR: no errors, whatever
    the source leaves out or gets wrong (no body part, a bare "62" as PatientAge)."""
    require(shutil.which("dciodvfy") is not None, "dicom3tools (dciodvfy) is not installed")
    if sample == "no-body-part":
        src = factories.radiograph(rows=400, columns=320, body_part=None)
    elif sample == "bare-age":
        src = factories.radiograph(rows=400, columns=320, PatientAge="62")
    else:
        src = pydicom.dcmread(sample)
    src_path = tmp_path / "src.dcm"
    src.save_as(src_path, enforce_file_format=True)
    sc = _sc(src)
    files = {"sc": tmp_path / "sc.dcm", "sr": tmp_path / "sr.dcm"}
    sc.save_as(files["sc"], enforce_file_format=True)
    _sr(src, sc).save_as(files["sr"], enforce_file_format=True)
    for kind, path in files.items():
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [
            line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")
        ]
        assert errors == [], (kind, errors)
    entity = subprocess.run(
        ["dcentvfy", str(src_path), *map(str, files.values())], capture_output=True, text=True
    )
    errors = [line for line in (entity.stdout + entity.stderr).splitlines() if "Error" in line]
    assert errors == [], errors
    for kind, path in files.items():
        made = pydicom.dcmread(path)
        # A PatientAge is the source's own, valid value or absent: never one we made up.
        assert made.get("PatientAge") in (None, src.get("PatientAge")), kind
        assert made.SeriesDate == made.ContentDate and made.SeriesTime == made.ContentTime
    made_sc = pydicom.dcmread(files["sc"])
    assert made_sc.LossyImageCompression == "01"
    assert made_sc.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(made_sc.LossyImageCompressionRatio) > 1


def test_report_needs_images_and_known_labels(source: pydicom.Dataset) -> None:
    kwargs: dict[str, Any] = dict(
        evidence=[source],
        algorithm=Algorithm("m", "1", "0"),
        series_instance_uid=new_uid(),
        sop_instance_uid=new_uid(),
        device_uid=new_uid(),
    )
    normal = Triage("normal", "not flagged", "routine", 0.9, T)
    with pytest.raises(ValueError, match="at least one"):
        build_report([], normal, **kwargs)
    with pytest.raises(ValueError, match="no code"):
        build_report(
            [ImageResult(source, Triage("tuberculosis", "flagged", "urgent", 0.9, T), PROBS)],
            normal,
            **kwargs,
        )
    with pytest.raises(ValueError, match="cannot be labelled"):
        Triage("covid", "not flagged", "routine", 0.1, T)


def test_sc_may_be_an_integer_fraction_of_the_source_size() -> None:
    from models.imaging import decimate

    src = factories.radiograph(rows=900, columns=700)
    grey = decimate(src.pixel_array.astype(np.float32) / 4095, 3)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
    sc = _sc(src, rgb)
    assert sc.Columns == 233 and sc.Rows > 300
    with pytest.raises(ValueError, match="same integer"):
        _sc(src, rgb[:, :200])


def _scoords(sr: pydicom.Dataset) -> list[list[str]]:
    """Per measurement group, the graphic types its first NUM is inferred from."""
    (measurements,) = [
        c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010"
    ]
    found = []
    for group in measurements.ContentSequence:
        assert not [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
        first = next(i for i in group.ContentSequence if i.ValueType == "NUM")
        found.append([i.GraphicType for i in first.ContentSequence if i.ValueType == "SCOORD"])
    return found


def test_every_measurement_group_has_a_scoord_and_only_findings_an_outline() -> None:
    """OHIF 3.13 reads coords[0] of every TID 1500 group: one without a SCOORD crashes it. A
    normal image has no outline (it would look like a finding's); two images, two groups."""
    src = factories.radiograph(rows=300, columns=240, bits=12)
    normal = Triage("normal", "not flagged", "routine", 0.96, T)
    covid_probs = {"normal": 0.02, "covid": 0.97, "pneumonia": 0.01}
    normal_probs = {"normal": 0.96, "covid": 0.03, "pneumonia": 0.01}
    box = (10.0, 10.0, 200.0, 250.0)
    images = [
        ImageResult(src, normal, normal_probs, region=box),
        ImageResult(src, COVID, covid_probs, region=box),
    ]
    sr = _build(images, COVID, [src])
    assert _scoords(sr) == [["POINT"], ["POINT", "POLYLINE"]]


def test_a_probability_that_rounds_to_zero_is_not_written_as_zero() -> None:
    """OHIF prints a zero NUM as a blank; 0.04% is kept with its digits, not made 0.0."""
    src = factories.radiograph(rows=300, columns=240, bits=12)
    probs = {"normal": 0.0004, "covid": 0.86, "pneumonia": 0.1396}
    sr = _read_back(_build([ImageResult(src, COVID, probs)], COVID, [src]))
    (group,) = _report(sr).get_image_measurement_groups()
    values = {m.name.value: m.value for m in group.get_measurements()}
    assert values == {"P-COVID": 86.0, "P-PNEUMONIA": 14.0, "P-NORMAL": 0.04}


def test_the_same_report_has_the_same_tracking_uids(source: pydicom.Dataset) -> None:
    sc = _sc(source)
    uid = new_uid()

    def tracking(sr: pydicom.Dataset) -> list[str]:
        return [
            i.UID
            for c in sr.ContentSequence
            if "ContentSequence" in c
            for g in c.ContentSequence
            if "ContentSequence" in g
            for i in g.ContentSequence
            if i.ValueType == "UIDREF"
        ]

    first, again = tracking(_sr(source, sc, uid)), tracking(_sr(source, sc, uid))
    assert len(first) == 1 and first == again  # one image, one group
    assert tracking(_sr(source, sc, new_uid())) != first


@pytest.mark.parametrize("missing", TYPE2_INHERITED)
def test_a_missing_type2_attribute_still_gives_both_objects(missing: str) -> None:
    """Anonymisers drop PatientBirthDate and the like: the study must still get its results."""
    src = pydicom.dcmread(shared_file("cr_pa_chest_jpeg_baseline.dcm"))
    src.pop(missing, None)
    sc = _round_trip(_sc(src))
    sr = _round_trip(_sr(src, sc))
    for ds in (sc, sr):
        assert missing in ds and not ds[missing].value  # present, empty: Type 2


def test_a_normal_result_has_no_heatmap_and_says_so() -> None:
    src = factories.radiograph(rows=400, columns=320, bits=12)
    grey = _overlay(src)
    normal = Triage("normal", "not flagged", "routine", 0.86, T)
    sc = _sc(src, grey, triage=normal, colour_ramp=colour_ramp())
    assert sc.SeriesDescription.startswith("AI ROUTINE normal 86.0% heatmap")
    strip = sc.pixel_array[src.Rows :].astype(int)
    # No colour scale for a normal result: the strip holds only yellow text on black.
    blue = (strip[..., 2] > 150) & (strip[..., 0] < 100) & (strip[..., 1] < 100)
    assert not blue.any()
    covid = _sc(src, grey, colour_ramp=colour_ramp())
    strip = covid.pixel_array[src.Rows :].astype(int)
    blue = (strip[..., 2] > 150) & (strip[..., 0] < 100) & (strip[..., 1] < 100)
    assert blue.any()  # the low end of the scale


def test_series_descriptions_fit_and_lead_with_the_result() -> None:
    flagged = Triage("pneumonia", "flagged", "soon", 0.914, T)
    text = wording.series_description(flagged, "heatmap")
    assert text == "AI SOON pneumonia 91.4% heatmap, not for diagnosis"
    longest = Triage("pneumonia", "indeterminate", "soon", 0.444, T)
    assert len(wording.series_description(longest, "heatmap")) <= 64


def test_numbers_are_honest_percentages() -> None:
    assert wording.percent(0.997) == "99.7%" and wording.percent(0.9996) == "> 99.9%"
    assert wording.percent(0.0) == "0.0%" and wording.percent(0.0004) == "< 0.1%"
    # Never rounded across the threshold it is compared with.
    assert wording.percent(0.49996) == "50.0%"
    assert wording.percent(0.49996, 0.5) == "49.9%"
    assert wording.percent(0.81234, 0.81234) == "81.3%"  # at the threshold: not shown below it
    below = Triage("covid", "indeterminate", "soon", 0.49996, T)
    assert "49.9%, below its flag at 50.0%" in wording.headline(below)


CASES = {
    "confident covid": [{"normal": 0.02, "covid": 0.97, "pneumonia": 0.01}],
    "covid top class below its threshold": [{"normal": 0.35, "covid": 0.48, "pneumonia": 0.17}],
    "borderline normal": [{"normal": 0.55, "covid": 0.44, "pneumonia": 0.01}],
    "normal": [{"normal": 0.96, "covid": 0.03, "pneumonia": 0.01}],
    "two images": [
        {"normal": 0.96, "covid": 0.03, "pneumonia": 0.01},
        {"normal": 0.02, "covid": 0.97, "pneumonia": 0.01},
    ],
}
EXPECTED = {  # (label, band, priority) of the study
    "confident covid": ("covid", "flagged", "urgent"),
    "covid top class below its threshold": ("covid", "indeterminate", "soon"),
    "borderline normal": ("covid", "indeterminate", "soon"),
    "normal": ("normal", "not flagged", "routine"),
    "two images": ("covid", "flagged", "urgent"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sc_sr_and_descriptions_say_the_same_thing(case: str) -> None:
    """One decision object per image and study: no "nothing flagged" beside a coloured SC."""
    from worker.decision import operating_point

    op = operating_point({"thresholds": T, "rule": "test"}, None, None)
    images = CASES[case]
    study, triages = op.decide(images)
    assert (study.label, study.band, study.priority) == EXPECTED[case]
    src = factories.radiograph(rows=300, columns=240, bits=12)
    scs, results = [], []
    for n, (probs, triage) in enumerate(zip(images, triages, strict=True)):
        assert triage == op.image(probs)
        top_finding = max(("covid", "pneumonia"), key=lambda k: probs[k])
        sc = _round_trip(
            _sc(src, triage=triage, heatmap_label=top_finding, colour_ramp=colour_ramp())
        )
        scs.append(sc)
        results.append(
            ImageResult(src, triage, probs, region=(20.0, 20.0, 200.0, 250.0), heatmap=sc)
        )
        # The SC's description and colour scale follow the image's band.
        assert sc.SeriesDescription.startswith(f"AI {triage.priority.upper()} ")
        assert (triage.band == "indeterminate") == ("indeterminate" in sc.SeriesDescription)
        strip = sc.pixel_array[src.Rows :].astype(int)
        scale = ((strip[..., 2] > 150) & (strip[..., 0] < 100) & (strip[..., 1] < 100)).any()
        assert scale == (triage.band != "not flagged"), (case, n)
    read = _read_back(_build(results, study, [src, *scs]))
    (evaluations,) = [
        c
        for c in read.ContentSequence
        if c.ConceptNameCodeSequence[0].CodeValue == codes.QUALITATIVE_EVALUATIONS.value
    ]
    (summary,) = [t.TextValue for t in evaluations.ContentSequence if t.ValueType == "TEXT"]
    near = any(p[k] >= T[k] - 0.2 for p in images for k in T)
    assert ("no finding at or near" in summary) == (not near) == (study.band == "not flagged")
    assert "1.00" not in summary and "0.48" not in summary  # percentages, one decimal
    assert read.SeriesDescription.startswith(f"AI {study.priority.upper()} ")
    label_word = "indeterminate covid" if study.band == "indeterminate" else study.label
    assert label_word in read.SeriesDescription
    groups = _report(read).get_image_measurement_groups()
    for group, result in zip(groups, results, strict=True):
        assert group.finding_type == codes.FINDING_CODES[result.triage.label]
        bands = {e.name.value: e.value for e in group.get_qualitative_evaluations()}
        assert bands["TRIAGE-BAND"] == codes.BAND_CODES[result.triage.band]
        assert bands["TRIAGE-PRIORITY"] == codes.PRIORITY_CODES[result.triage.priority]
        (line,) = [
            i.TextValue
            for i in group[0].ContentSequence
            if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"
        ]
        assert line == wording.viewer_line(result.triage)
        assert ("Not flagged" in line) == (result.triage.band == "not flagged")
    study_codes = {
        i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0]
        for i in evaluations.ContentSequence
        if i.ValueType == "CODE"
    }
    assert study_codes["TRIAGE-BAND"].CodeValue == codes.BAND_CODES[study.band].value
    assert study_codes["TRIAGE-PRIORITY"].CodeValue == codes.PRIORITY_CODES[study.priority].value
    assert study_codes["121071"].CodeValue == codes.FINDING_CODES[study.label].value
