"""What the results say to people: series descriptions, the SR's summary, the SC's label strip.

One owner for the words, so the SR, the SC and the docs say the same thing the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from dicom_node.results import codes

#: Said on every result object, in words a viewer's series list keeps visible.
NOT_FOR_DIAGNOSIS = "not for diagnosis"
DIGITS = 3


def meaning(label: str) -> str:
    """The finding's name as a reader knows it ("COVID-19", "Pneumonia", "Normal")."""
    return codes.FINDING_CODES[label].meaning


def series_description(label: str, priority: str, probability: float, kind: str) -> str:
    """Result first, at most 64 characters: what a series list or worklist column shows.

    ``AI URGENT covid 0.91 report - not for diagnosis``
    """
    text = f"AI {priority.upper()} {label} {probability:.2f} {kind} - {NOT_FOR_DIAGNOSIS}"
    if len(text) > 64:
        raise ValueError(f"series description over 64 characters: {text!r}")
    return text


def ranked(probabilities: dict[str, float]) -> str:
    """``COVID-19 0.910, Pneumonia 0.050, Normal 0.040``."""
    order = sorted(probabilities.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{meaning(k)} {v:.{DIGITS}f}" for k, v in order)


def heatmap_meaning(label: str) -> str:
    """What an SC's colours mean; a normal result has no colours (nothing to point at)."""
    if label == "normal":
        return "no heatmap: nothing flagged"
    return f"heatmap = evidence for {meaning(label)}"


def summary(label: str, priority: str, images: Sequence[dict[str, float]]) -> str:
    """The SR in one sentence: result, priority, probabilities, what the heatmaps show."""
    if len(images) == 1:
        values = ranked(images[0])
    else:
        highest = {k: max(p.get(k, 0.0) for p in images) for k in images[0]}
        values = f"{len(images)} images, highest {ranked(highest)}"
    return (
        f"AI triage, {NOT_FOR_DIAGNOSIS}: {meaning(label)}, priority {priority.upper()}; "
        f"{values}; {heatmap_meaning(label)}"
    )
