"""From per-image probabilities to the study-level result and its triage priority."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.site_calibration import SiteCalibration, load_site_calibration

if TYPE_CHECKING:
    from worker.settings import Settings

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
    source: str  # "model card", "settings", "site calibration ..." or "fallback" (or a mix)
    rule: str = ""
    temperature: float | None = None  # a site calibration's; None: the card's

    def describe(self) -> str:
        values = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.thresholds.items()))
        return f"{self.source}: {values}"


def operating_point(
    card_point: Mapping[str, Any],
    covid: float | None,
    pneumonia: float | None,
    site: SiteCalibration | None = None,
) -> OperatingPoint:
    """The thresholds in force, per class: ``CXR_THRESHOLD_*`` where set, else the site
    calibration's (``CXR_SITE_CALIBRATION``), else the model card's, else 0.5.

    ``card_point`` is the card's ``operating_point`` (empty for models before 3.0).
    """
    card = dict(card_point.get("thresholds", {}))
    configured = {"covid": covid, "pneumonia": pneumonia}
    thresholds: dict[str, float] = {}
    sources = set()
    for label in SEVERITY:
        value = configured[label]
        if value is not None:
            thresholds[label], source = float(value), "settings"
        elif site is not None and label in site.thresholds:
            thresholds[label], source = float(site.thresholds[label]), site.describe()
        elif label in card:
            thresholds[label], source = float(card[label]), "model card"
        else:
            thresholds[label], source = FALLBACK_THRESHOLD, "fallback"
        sources.add(source)
    source = sources.pop() if len(sources) == 1 else " + ".join(sorted(sources))
    rule = str(card_point.get("rule", "")) if "model card" in source else ""
    return OperatingPoint(thresholds, source, rule, site.temperature if site else None)


def operating_point_for(settings: Settings, card: Any) -> OperatingPoint:
    """:func:`operating_point` from the settings and a model card, loading the site file.

    Raises :class:`worker.site_calibration.SiteCalibrationError` for a site file that is
    missing, unreadable or made for other weights.
    """
    site = None
    if settings.site_calibration is not None:
        site = load_site_calibration(settings.site_calibration, card.weights_sha256)
    return operating_point(
        card.operating_point, settings.threshold_covid, settings.threshold_pneumonia, site
    )
