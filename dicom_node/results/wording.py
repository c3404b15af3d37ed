"""What the results say to people: series descriptions, the SR's summary, the SC's label strip.

One owner for the words, so the SR, the SC and the docs say the same thing the same way, all
from one :class:`~dicom_node.results.triage.Triage`. Numbers are percentages with one decimal,
never "1.00" for 0.997, and never rounded across the threshold they are compared with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dicom_node.results import codes
from dicom_node.results.triage import FLAGGED, INDETERMINATE, Triage

#: Said on every result object, in words a viewer's series list keeps visible.
NOT_FOR_DIAGNOSIS = "not for diagnosis"


def meaning(label: str) -> str:
    """The finding's name as a reader knows it ("COVID-19", "Pneumonia", "Normal")."""
    return codes.FINDING_CODES[label].meaning


def percent(p: float, threshold: float | None = None) -> str:
    """``91.2%``; ``> 99.9%`` and ``< 0.1%`` at the ends; ``0.0%`` for zero.

    With ``threshold``, a value below it is never shown at or above it (and the reverse): the
    last digit is cut towards the side the value is on.
    """
    value = 100 * float(p)
    if value > 99.9:
        return "> 99.9%"
    if 0 < value < 0.1:
        return "< 0.1%"
    text = f"{value:.1f}"
    if threshold is not None:
        line = 100 * threshold
        if value < line <= float(text):
            text = f"{math.floor(value * 10) / 10:.1f}"
        elif value >= line > float(text):
            text = f"{math.ceil(value * 10) / 10:.1f}"
    return f"{text}%"


def ranked(probabilities: dict[str, float]) -> str:
    """``COVID-19 91.0%, Normal 5.0%, Pneumonia 4.0%``."""
    order = sorted(probabilities.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{meaning(k)} {percent(v)}" for k, v in order)


def caution(t: Triage) -> str | None:
    """What a low-confidence result must say beside it (None otherwise): the image lies beyond
    the model's familiarity limit, so its probabilities are not to be relied on as they stand."""
    if not t.low_confidence:
        return None
    return "LOW CONFIDENCE: image unlike the model's training data, read it without the AI"


def headline(t: Triage) -> str:
    """The result in one line: what, how sure against what, and the priority."""
    if t.band == FLAGGED:
        text = (
            f"{meaning(t.label)} flagged: {percent(t.probability, t.threshold)} "
            f"(flag at {percent(t.threshold or 0)})"
        )
    elif t.band == INDETERMINATE:
        text = (
            f"Indeterminate: {meaning(t.label)} {percent(t.probability, t.threshold)}, "
            f"below its flag at {percent(t.threshold or 0)}"
        )
    else:
        text = "Not flagged: no finding at or near its threshold"
    if t.low_confidence:
        text += " (low confidence)"
    return f"{text}, priority {t.priority.upper()}"


def viewer_line(t: Triage) -> str:
    """The result as a viewer draws it beside the probabilities (OHIF: one line, above them)."""
    if t.band == FLAGGED:
        said = f"{meaning(t.label)} flagged"
    elif t.band == INDETERMINATE:
        said = f"Indeterminate, {meaning(t.label)} near its flag"
    else:
        said = "Not flagged"
    if t.low_confidence:
        said += ", LOW CONFIDENCE"
    return f"AI {t.priority.upper()}: {said}, {NOT_FOR_DIAGNOSIS}"


def heatmap_meaning(t: Triage, heatmap_label: str | None) -> str:
    """What an SC's colours mean: evidence for one class, never a finding's outline."""
    if t.band not in (FLAGGED, INDETERMINATE) or heatmap_label is None:
        return "no heatmap: no finding at or near its threshold"
    return f"colours = evidence for {meaning(heatmap_label)} only (red most), not an outline"


def series_description(t: Triage, kind: str) -> str:
    """Result first, at most 64 characters: what a series list or worklist column shows.

    ``AI URGENT covid 91.2% report, not for diagnosis``;
    ``AI SOON indeterminate covid 44.0% heatmap, not for diagnosis``;
    ``AI SOON lowconf indet pneumonia 44.0% heatmap, not for diagnosis`` (low confidence).
    """
    band = "indeterminate " if t.band == INDETERMINATE else ""
    if t.low_confidence:
        band = "lowconf " + band.replace("indeterminate", "indet")
    value = percent(t.probability, t.threshold)
    text = f"AI {t.priority.upper()} {band}{t.label} {value} {kind}, {NOT_FOR_DIAGNOSIS}"
    if len(text) > 64:
        raise ValueError(f"series description over 64 characters: {text!r}")
    return text


def summary(study: Triage, images: Sequence[dict[str, float]]) -> str:
    """The SR in one sentence: result, priority, probabilities, what the heatmaps show."""
    if len(images) == 1:
        values = ranked(images[0])
    else:
        highest = {k: max(p.get(k, 0.0) for p in images) for k in images[0]}
        values = f"{len(images)} images, highest {ranked(highest)}"
    if study.band in (FLAGGED, INDETERMINATE):
        heat = "heatmaps show evidence for the class named on each, not an outline"
    else:
        heat = "no heatmap: no finding at or near its threshold"
    warned = f"; {caution(study)}" if study.low_confidence else ""
    return f"AI triage, {NOT_FOR_DIAGNOSIS}: {headline(study)}{warned}; {values}; {heat}"
