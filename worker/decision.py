"""From per-image probabilities to the study-level result and its triage priority."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Most severe first: a study is labelled with the most severe class any image reaches.
SEVERITY = ("covid", "pneumonia")
PRIORITY = {"covid": "urgent", "pneumonia": "soon", "normal": "routine"}


@dataclass(frozen=True)
class StudyDecision:
    label: str
    priority: str
    thresholds: dict[str, float]


def decide_study(
    image_probabilities: Sequence[dict[str, float]], thresholds: dict[str, float]
) -> StudyDecision:
    """The most severe class whose probability reaches its threshold on any image, else normal.

    Raises
    ------
    ValueError
        If there is no image, or a threshold is missing for a severe class.
    """
    if not image_probabilities:
        raise ValueError("a study decision needs at least one image")
    for label in SEVERITY:
        if label not in thresholds:
            raise ValueError(f"no threshold for {label}")
        if any(p.get(label, 0.0) >= thresholds[label] for p in image_probabilities):
            return StudyDecision(label, PRIORITY[label], dict(thresholds))
    return StudyDecision("normal", PRIORITY["normal"], dict(thresholds))
