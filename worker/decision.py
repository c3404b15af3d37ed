"""From per-image probabilities to the study-level result and its triage priority."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


#: Where no card or setting says otherwise (models before 3.0 carry no operating point).
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class OperatingPoint:
    """The flag thresholds in force and where they come from, as results and audit name them."""

    thresholds: dict[str, float]
    source: str  # "model card", "settings" or "fallback"
    rule: str = ""

    def describe(self) -> str:
        values = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.thresholds.items()))
        return f"{self.source}: {values}"


def operating_point(
    card_point: Mapping[str, Any], covid: float | None, pneumonia: float | None
) -> OperatingPoint:
    """The thresholds in force: ``CXR_THRESHOLD_*`` where set, else the model card's.

    ``card_point`` is the card's ``operating_point`` (empty for older models, which fall back to
    0.5). A threshold set in the settings replaces the card's for that class only.
    """
    card = dict(card_point.get("thresholds", {}))
    configured = {"covid": covid, "pneumonia": pneumonia}
    thresholds: dict[str, float] = {}
    sources = set()
    for label in SEVERITY:
        value = configured[label]
        if value is not None:
            thresholds[label], source = float(value), "settings"
        elif label in card:
            thresholds[label], source = float(card[label]), "model card"
        else:
            thresholds[label], source = FALLBACK_THRESHOLD, "fallback"
        sources.add(source)
    source = sources.pop() if len(sources) == 1 else " + ".join(sorted(sources))
    rule = str(card_point.get("rule", "")) if "model card" in source else ""
    return OperatingPoint(thresholds, source, rule)
