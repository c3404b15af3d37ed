"""Reading the study's result back from one of our SRs, for the messages made from it (HL7
v2, FHIR): the SR is the one record of a result, so a message cannot say anything it does not."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from dicom_node.results import codes

DCM = pydicom_codes.DCM

# The concepts the SR is built with (sr.py), looked up by their code values.
EVALUATIONS = codes.QUALITATIVE_EVALUATIONS.value
MEASUREMENTS = DCM.ImagingMeasurements.value
FINDING = codes.FINDING.value
COMMENT = codes.SUMMARY.value
BAND = codes.TRIAGE_BAND.value
PRIORITY = codes.TRIAGE_PRIORITY.value
#: Code value -> (field of StudyResult.algorithm, its meaning): TID 4019's items.
ALGORITHM = {
    c.value: (name, c.meaning)
    for name, c in (
        ("name", DCM.AlgorithmName),
        ("version", DCM.AlgorithmVersion),
        ("parameter", DCM.AlgorithmParameters),
    )
}


@dataclass
class StudyResult:
    """The study's result as our SR records it: what an HL7 or FHIR message says."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    accession: str
    study_uid: str
    sr_uid: str
    when: str  # the SR's content date and time, YYYYMMDDHHMMSS
    finding: tuple[str, str, str]  # (code, meaning, scheme) of the study's label
    band: tuple[str, str, str]
    priority: tuple[str, str, str]
    summary: str
    probabilities: dict[tuple[str, str, str], float] = field(default_factory=dict)
    algorithm: dict[str, list[str]] = field(default_factory=dict)


def _code(item: Dataset, sequence: str) -> tuple[str, str, str]:
    c = getattr(item, sequence)[0]
    return (str(c.CodeValue), str(c.CodeMeaning), str(c.CodingSchemeDesignator))


def result_from_sr(sr: Dataset) -> StudyResult:
    """The study's result from one of our SRs.

    Raises
    ------
    ValueError
        If the SR lacks the study's finding, band, priority or summary (not one of ours).
    """
    evaluations: dict[str, Dataset] = {}
    probabilities: dict[tuple[str, str, str], float] = {}
    algorithm: dict[str, list[str]] = {}
    for item in sr.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeValue
        if name == EVALUATIONS:
            for e in item.get("ContentSequence", []):
                evaluations[e.ConceptNameCodeSequence[0].CodeValue] = e
        elif name == MEASUREMENTS:
            for group in item.get("ContentSequence", []):
                for i in group.get("ContentSequence", []):
                    code = i.ConceptNameCodeSequence[0].CodeValue
                    if i.ValueType == "NUM":
                        key = _code(i, "ConceptNameCodeSequence")
                        value = float(i.MeasuredValueSequence[0].NumericValue)
                        probabilities[key] = max(probabilities.get(key, 0.0), value)
                    elif code in ALGORITHM and i.ValueType == "TEXT":
                        values = algorithm.setdefault(ALGORITHM[code][0], [])
                        if str(i.TextValue) not in values:
                            values.append(str(i.TextValue))
    missing = {FINDING, BAND, PRIORITY, COMMENT} - set(evaluations)
    if missing:
        raise ValueError(f"not a cxr-triage SR: no {', '.join(sorted(missing))} for the study")
    return StudyResult(
        patient_id=str(sr.get("PatientID", "") or ""),
        patient_name=str(sr.get("PatientName", "") or ""),
        birth_date=str(sr.get("PatientBirthDate", "") or ""),
        sex=str(sr.get("PatientSex", "") or ""),
        accession=str(sr.get("AccessionNumber", "") or ""),
        study_uid=str(sr.StudyInstanceUID),
        sr_uid=str(sr.SOPInstanceUID),
        when=f"{sr.get('ContentDate', '')}{str(sr.get('ContentTime', ''))[:6]}",
        finding=_code(evaluations[FINDING], "ConceptCodeSequence"),
        band=_code(evaluations[BAND], "ConceptCodeSequence"),
        priority=_code(evaluations[PRIORITY], "ConceptCodeSequence"),
        summary=str(evaluations[COMMENT].TextValue),
        probabilities=dict(sorted(probabilities.items(), key=lambda kv: -kv[1])),
        algorithm=algorithm,
    )
