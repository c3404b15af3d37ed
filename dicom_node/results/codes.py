"""Coded concepts used in the results (documented in ``docs/results.md``).

Standard codes where they exist (SNOMED CT "SCT", DICOM "DCM", LOINC "LN", UCUM); a private
coding scheme ``99CXRTRIAGE`` only where none exists.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99CXRTRIAGE"

#: Procedure reported (TID 1500 requires one).
PROCEDURE_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
FINDING = Code("121071", "DCM", "Finding")

FINDING_CODES: dict[str, Code] = {
    "normal": Code("17621005", "SCT", "Normal"),
    "covid": Code("840539006", "SCT", "COVID-19"),
    "pneumonia": Code("233604007", "SCT", "Pneumonia"),
}

#: "Probability of <finding>": no standard concept exists for a classifier's class probability.
PROBABILITY_CODES: dict[str, Code] = {
    "normal": Code("P-NORMAL", PRIVATE_SCHEME, "Probability of normal"),
    "covid": Code("P-COVID", PRIVATE_SCHEME, "Probability of COVID-19"),
    "pneumonia": Code("P-PNEUMONIA", PRIVATE_SCHEME, "Probability of non-COVID pneumonia"),
}
PERCENT = Code("%", "UCUM", "percent")

TRIAGE_PRIORITY = Code("TRIAGE-PRIORITY", PRIVATE_SCHEME, "Triage priority")
PRIORITY_CODES: dict[str, Code] = {
    "urgent": Code("URGENT", PRIVATE_SCHEME, "Urgent"),
    "soon": Code("SOON", PRIVATE_SCHEME, "Soon"),
    "routine": Code("ROUTINE", PRIVATE_SCHEME, "Routine"),
}
#: The result's band at the operating point (dicom_node.results.triage), as SNOMED qualifiers.
TRIAGE_BAND = Code("TRIAGE-BAND", PRIVATE_SCHEME, "Triage result band")
BAND_CODES: dict[str, Code] = {
    "flagged": Code("10828004", "SCT", "Positive"),
    "indeterminate": Code("82334004", "SCT", "Indeterminate"),
    "not flagged": Code("260385009", "SCT", "Negative"),
}
#: Whether the image lies within the model's training data (models.familiarity): no standard
#: concept names an algorithm's out-of-distribution judgement.
MODEL_CONFIDENCE = Code("MODEL-CONFIDENCE", PRIVATE_SCHEME, "Model confidence")
CONFIDENCE_CODES: dict[bool, Code] = {
    True: Code("LOW-CONFIDENCE", PRIVATE_SCHEME, "Low: image unlike the training data"),
    False: Code("USUAL-CONFIDENCE", PRIVATE_SCHEME, "Usual: image like the training data"),
}
#: Purpose of a SCOORD that only places a viewer's text (no standard concept says so).
TEXT_ANCHOR = Code("TEXT-ANCHOR", PRIVATE_SCHEME, "Viewer text anchor")
#: CID 7162 Algorithm Family.
ALGORITHM_FAMILY = Code("123110", "DCM", "Artificial Intelligence")
#: TID 1410's reference to an image that shows the region (our Grad-CAM SC).
ILLUSTRATION_OF_ROI = Code("121200", "DCM", "Illustration of ROI")
#: TID 1500's container for qualitative evaluations of the whole report.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
SUMMARY = Code("121106", "DCM", "Comment")
