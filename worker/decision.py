"""From per-image probabilities to each image's and the study's triage result, at the
operating point in force (the card's, a site calibration's or the settings')."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from dicom_node.results.triage import BANDS, FLAGGED, INDETERMINATE, NOT_FLAGGED, Triage
from worker.site_calibration import SiteCalibration, load_site_calibration

if TYPE_CHECKING:
    from worker.settings import Settings

#: Most severe first: a study is labelled with the most severe class any image reaches.
SEVERITY = ("covid", "pneumonia")
PRIORITY = {"covid": "urgent", "pneumonia": "soon", "normal": "routine"}
#: Below a threshold but within the margin: a reader should look, sooner than routine.
INDETERMINATE_PRIORITY = "soon"
#: How far below a class's threshold a probability is indeterminate, not "not flagged".
DEFAULT_MARGIN = 0.2
#: An image unlike the training data is never routine: a reader should look (a flag stays).
LOW_CONFIDENCE_PRIORITY = "soon"


def low_confidence(novelty: float | None) -> bool | None:
    """Beyond the familiarity limit (novelty over 1); None where the model has no index."""
    return None if novelty is None else novelty > 1.0


def _with_confidence(t: Triage, low: bool | None) -> Triage:
    """``t`` with its confidence; a low one lifts a routine priority to soon, never lowers one."""
    if low is None:
        return t
    priority = LOW_CONFIDENCE_PRIORITY if low and t.priority == PRIORITY["normal"] else t.priority
    return replace(t, low_confidence=low, priority=priority)


def decide_image(
    probabilities: Mapping[str, float], thresholds: Mapping[str, float], margin: float
) -> Triage:
    """One image: the most severe class at its threshold is flagged; else the most severe within
    ``margin`` below its threshold is indeterminate; else nothing is flagged.

    Raises ``ValueError`` if a threshold is missing for a severe class.
    """
    for label in SEVERITY:
        if label not in thresholds:
            raise ValueError(f"no threshold for {label}")
    th = {k: float(thresholds[k]) for k in SEVERITY}
    p = {k: float(probabilities.get(k, 0.0)) for k in (*SEVERITY, "normal")}
    for label in SEVERITY:
        if p[label] >= th[label]:
            return Triage(label, FLAGGED, PRIORITY[label], p[label], th)
    for label in SEVERITY:
        if p[label] >= th[label] - margin:
            return Triage(label, INDETERMINATE, INDETERMINATE_PRIORITY, p[label], th)
    return Triage("normal", NOT_FLAGGED, PRIORITY["normal"], p["normal"], th)


def decide_study(
    image_probabilities: Sequence[Mapping[str, float]],
    thresholds: Mapping[str, float],
    margin: float = DEFAULT_MARGIN,
    operating_point: str = "",
) -> Triage:
    """The study's result: its most urgent image's (flagged before indeterminate before not
    flagged, COVID-19 before pneumonia), with that class's highest probability over the images.

    Raises
    ------
    ValueError
        If there is no image, or a threshold is missing for a severe class.
    """
    images = [decide_image(p, thresholds, margin) for p in image_probabilities]
    return study_of(images, image_probabilities, operating_point)


def study_of(
    images: Sequence[Triage],
    image_probabilities: Sequence[Mapping[str, float]],
    operating_point: str = "",
) -> Triage:
    """The study's result from its images' results (see :func:`decide_study`)."""
    if not images:
        raise ValueError("a study decision needs at least one image")
    order = [*SEVERITY, "normal"]
    top = min(images, key=lambda t: (BANDS.index(t.band), order.index(t.label)))
    highest = max(float(p.get(top.label, 0.0)) for p in image_probabilities)
    study = replace(top, probability=highest, operating_point=operating_point)
    assessed = [t.low_confidence for t in images if t.low_confidence is not None]
    if not assessed:
        return study
    # One image unlike the training data makes the study's result low confidence.
    return _with_confidence(study, any(assessed))


#: Where no card or setting says otherwise (models before 3.0 carry no operating point).
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class OperatingPoint:
    """The flag thresholds in force and where they come from, as results and audit name them."""

    thresholds: dict[str, float]
    source: str  # "model card", "settings", "site calibration ..." or "fallback" (or a mix)
    rule: str = ""
    temperature: float | None = None  # a site calibration's; None: the card's
    margin: float = DEFAULT_MARGIN  # the indeterminate band below each threshold

    def image(self, probabilities: Mapping[str, float], novelty: float | None = None) -> Triage:
        """One image's result at this operating point; with ``novelty`` (the image's distance
        to the training data over the model's limit) also its confidence."""
        return _with_confidence(
            replace(
                decide_image(probabilities, self.thresholds, self.margin),
                operating_point=self.source,
            ),
            low_confidence(novelty),
        )

    def decide(
        self,
        image_probabilities: Sequence[Mapping[str, float]],
        novelties: Sequence[float | None] | None = None,
    ) -> tuple[Triage, list[Triage]]:
        """The study's result and each image's, at this operating point, each made once."""
        novelties = novelties or [None] * len(image_probabilities)
        images = [self.image(p, n) for p, n in zip(image_probabilities, novelties, strict=True)]
        return study_of(images, image_probabilities, self.source), images

    def apply(self, model: Any) -> Any:
        """Give a loaded model the site's temperature, if this point has one (else as it is),
        so that every probability shown or thresholded is the site's."""
        if self.temperature is not None:
            model.card = replace(model.card, temperature=self.temperature)
        return model

    def describe(self) -> str:
        values = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.thresholds.items()))
        return f"{self.source}: {values}"


def operating_point(
    card_point: Mapping[str, Any],
    covid: float | None,
    pneumonia: float | None,
    site: SiteCalibration | None = None,
    margin: float = DEFAULT_MARGIN,
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
    return OperatingPoint(thresholds, source, rule, site.temperature if site else None, margin)


def operating_point_for(settings: Settings, card: Any) -> OperatingPoint:
    """:func:`operating_point` from the settings and a model card, loading the site file.

    Raises :class:`worker.site_calibration.SiteCalibrationError` for a site file that is
    missing, unreadable or made for other weights.
    """
    site = None
    if settings.model.site_calibration is not None:
        site = load_site_calibration(settings.model.site_calibration, card.weights_sha256)
    return operating_point(
        card.operating_point,
        settings.model.threshold_covid,
        settings.model.threshold_pneumonia,
        site,
        settings.model.indeterminate_margin,
    )
