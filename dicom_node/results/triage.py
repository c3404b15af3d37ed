"""The triage result of an image or a study: one object every result is written from.

The SC's label strip, the SR's text and codes, the series descriptions, the audit row and
``predict`` all read the same :class:`Triage`, so they cannot disagree. It is made by the
worker (``worker.decision``) from the probabilities and the operating point; the builders here
only say it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The three bands, most urgent first.
FLAGGED = "flagged"
INDETERMINATE = "indeterminate"
NOT_FLAGGED = "not flagged"
BANDS = (FLAGGED, INDETERMINATE, NOT_FLAGGED)


@dataclass(frozen=True)
class Triage:
    """What the model's output means at the operating point.

    ``label`` is the flagged class; for an indeterminate result the class within its band
    below the threshold; ``normal`` when nothing is flagged or near. ``probability`` is that
    class's (for a study: its highest over the images); ``thresholds`` and ``operating_point``
    say what it was measured against.
    """

    label: str
    band: str
    priority: str
    probability: float
    thresholds: dict[str, float]
    operating_point: str = ""
    #: The image (for a study: any image) lies beyond the model's familiarity limit: the
    #: probabilities are not to be trusted as they stand. None: the model has no such index.
    low_confidence: bool | None = None

    def __post_init__(self) -> None:
        if self.band not in BANDS:
            raise ValueError(f"band must be one of {BANDS}, not {self.band!r}")
        if (self.band == NOT_FLAGGED) != (self.label == "normal"):
            raise ValueError(f"a {self.band} result cannot be labelled {self.label!r}")

    @property
    def threshold(self) -> float | None:
        """The flag threshold of ``label`` (None for normal)."""
        return self.thresholds.get(self.label)
