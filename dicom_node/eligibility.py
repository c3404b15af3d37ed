"""Which received instances are posteroanterior (PA) chest radiographs.

The rule table is documented in ``docs/eligibility.md``; keep the two in step. Every decision
carries a short rule name and a human-readable reason, both stored for every instance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

#: Manufacturer written into every object this product creates (loop protection).
OUR_MANUFACTURER = "cxr-triage"

RADIOGRAPHY_MODALITIES = frozenset({"CR", "DX"})
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX"})
# SNOMED CT codes: postero-anterior view, chest region, Homo sapiens.
PA_VIEW_CODE = "399348003"
CHEST_REGION_CODES = frozenset({"51185008", "43799004"})  # thorax / chest structure
HUMAN_SPECIES_CODE = "337915000"

_PA_WORDS = frozenset({"PA", "POSTEROANTERIOR", "POSTERO"})
_NON_PA_WORDS = frozenset(
    {
        "AP",
        "ANTEROPOSTERIOR",
        "ANTERO",
        "LAT",
        "LATERAL",
        "LL",
        "RL",
        "LLAT",
        "RLAT",
        "DECUB",
        "DECUBITUS",
        "OBL",
        "OBLIQUE",
        "LORDOTIC",
        "SUPINE",
    }
)
_CHEST_WORDS = frozenset({"CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "CXR", "PULMONARY"})
_NON_HUMAN_WORDS = frozenset(
    {
        "CANINE",
        "FELINE",
        "EQUINE",
        "BOVINE",
        "PORCINE",
        "OVINE",
        "VET",
        "VETERINARY",
        "VETERINARIAN",
        "DOG",
        "CAT",
        "HORSE",
    }
)
# Free-text attributes searched for views, most specific first.
DESCRIPTION_KEYWORDS = (
    "SeriesDescription",
    "ProtocolName",
    "AcquisitionDeviceProcessingDescription",
    "StudyDescription",
)


@dataclass(frozen=True)
class Decision:
    """Whether an instance is processed, and why.

    Attributes
    ----------
    eligible : bool
        True for a PA chest radiograph that the classifier should see.
    rule : str
        Short name of the rule that decided (see ``docs/eligibility.md``).
    reason : str
        One sentence for people, naming the attributes and values that decided.
    """

    eligible: bool
    rule: str
    reason: str


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return " ".join(str(v) for v in value)
    return str(value).strip()


def _words(text: str) -> set[str]:
    upper = text.upper()
    words = set(re.findall(r"[A-Z0-9]+", upper))
    # "P-A", "P/A" and "A-P", "A/P" split into single letters above.
    if re.search(r"\bP\s*[-/]\s*A\b", upper):
        words.add("PA")
    if re.search(r"\bA\s*[-/]\s*P\b", upper):
        words.add("AP")
    if re.search(r"POSTERO\s*-?\s*ANTERIOR", upper):
        words.add("POSTEROANTERIOR")
    if re.search(r"ANTERO\s*-?\s*POSTERIOR", upper):
        words.add("ANTEROPOSTERIOR")
    return words


def _codes(ds: Dataset, keyword: str) -> list[tuple[str, str]]:
    items = ds.get(keyword) or []
    return [(str(i.get("CodeValue", "")), str(i.get("CodeMeaning", ""))) for i in items]


def _is_own_output(ds: Dataset, uid_root: str) -> bool:
    if _text(ds, "Manufacturer") == OUR_MANUFACTURER:
        return True
    if OUR_MANUFACTURER in _text(ds, "DerivationDescription").lower():
        return True
    return any(_text(ds, kw).startswith(uid_root) for kw in ("SOPInstanceUID", "SeriesInstanceUID"))


def _non_human(ds: Dataset) -> str | None:
    species = _text(ds, "PatientSpeciesDescription")
    codes = _codes(ds, "PatientSpeciesCodeSequence")
    if codes and all(code != HUMAN_SPECIES_CODE for code, _ in codes):
        return f"PatientSpeciesCodeSequence is {codes[0][1] or codes[0][0]!r}, not Homo sapiens"
    if species and not ({"HUMAN", "HOMO"} & _words(species)):
        return f"PatientSpeciesDescription is {species!r}"
    for kw in (*DESCRIPTION_KEYWORDS, "InstitutionName", "ImageComments"):
        hit = _words(_text(ds, kw)) & _NON_HUMAN_WORDS
        if hit:
            return f"{kw} {_text(ds, kw)!r} names a non-human subject ({sorted(hit)[0]})"
    return None


def _body_part(ds: Dataset) -> tuple[bool | None, str]:
    """Return (is chest, evidence); None when no attribute says."""
    body = _text(ds, "BodyPartExamined").upper()
    if body:
        if body in CHEST_BODY_PARTS:
            return True, f"BodyPartExamined {body}"
        return False, f"BodyPartExamined {body!r} is not CHEST or THORAX"
    codes = _codes(ds, "AnatomicRegionSequence")
    if codes:
        if any(code in CHEST_REGION_CODES for code, _ in codes):
            return True, "AnatomicRegionSequence chest"
        return False, f"AnatomicRegionSequence {codes[0][1] or codes[0][0]!r} is not the chest"
    for kw in DESCRIPTION_KEYWORDS:
        if _words(_text(ds, kw)) & _CHEST_WORDS:
            return True, f"{kw} {_text(ds, kw)!r}"
    return None, "no BodyPartExamined, AnatomicRegionSequence or chest in the descriptions"


def _view(ds: Dataset) -> tuple[bool | None, str, str]:
    """Return (is PA, rule, evidence); None when no attribute says."""
    position = _text(ds, "ViewPosition").upper()
    if position:
        if position == "PA":
            return True, "view-position", "ViewPosition PA"
        return False, "view-position", f"ViewPosition {position!r} is not PA"
    codes = _codes(ds, "ViewCodeSequence")
    if codes:
        code, meaning = codes[0]
        if code == PA_VIEW_CODE:
            return True, "view-code", "ViewCodeSequence postero-anterior (SCT 399348003)"
        return False, "view-code", f"ViewCodeSequence {meaning or code!r} is not postero-anterior"
    for kw in DESCRIPTION_KEYWORDS:
        text = _text(ds, kw)
        words = _words(text)
        pa, other = bool(words & _PA_WORDS), words & _NON_PA_WORDS
        if pa and not other:
            return True, "description", f"{kw} {text!r} names a PA view"
        if other and not pa:
            return False, "description", f"{kw} {text!r} names a non-PA view ({sorted(other)[0]})"
    return None, "view-unknown", "no ViewPosition, ViewCodeSequence or view in the descriptions"


def decide(ds: Dataset, *, uid_root: str, assume_pa_chest: bool = False) -> Decision:
    """Decide whether ``ds`` is a PA chest radiograph to classify.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance's attributes; pixel data is not needed.
    uid_root : str
        UID root of objects this product creates (loop protection).
    assume_pa_chest : bool
        Accept a CR/DX image whose view or body part no attribute states. Off by default: an
        AP or lateral image would be classified as if it were PA.

    Returns
    -------
    Decision
    """
    if _is_own_output(ds, uid_root):
        return Decision(False, "own-output", "object produced by cxr-triage (loop protection)")
    modality = _text(ds, "Modality").upper()
    if modality not in RADIOGRAPHY_MODALITIES:
        shown = repr(modality) if modality else "missing"
        return Decision(False, "modality", f"Modality {shown} is not CR or DX")
    if _text(ds, "PresentationIntentType").upper() == "FOR PROCESSING":
        return Decision(
            False, "for-processing", "PresentationIntentType FOR PROCESSING (raw detector data)"
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds and ds.get("Rows") is None:
        return Decision(False, "no-image", "the instance has no image")
    non_human = _non_human(ds)
    if non_human:
        return Decision(False, "non-human", non_human)
    chest, body_evidence = _body_part(ds)
    if chest is False:
        return Decision(False, "body-part", body_evidence)
    is_pa, view_rule, view_evidence = _view(ds)
    if is_pa is False:
        return Decision(False, view_rule, view_evidence)
    if is_pa and chest:
        return Decision(True, view_rule, f"{modality} {view_evidence}, {body_evidence}")
    unknown = view_evidence if is_pa is None else body_evidence
    if assume_pa_chest:
        return Decision(
            True, "assumed", f"{modality}: {unknown}; accepted because assume_pa_chest is on"
        )
    return Decision(
        False,
        "view-unknown" if is_pa is None else "body-part-unknown",
        f"{modality}: {unknown} (set CXR_ASSUME_PA_CHEST=true to accept such images)",
    )


def describe_rules() -> Iterable[str]:
    """Yield the rule names in the order :func:`decide` applies them (for docs and tests)."""
    yield from (
        "own-output",
        "modality",
        "for-processing",
        "no-image",
        "non-human",
        "body-part",
        "view-position",
        "view-code",
        "description",
        "assumed",
        "view-unknown",
        "body-part-unknown",
    )
