"""A hospital's own operating point: the site file ``cxr-triage calibrate`` writes.

It holds thresholds (and a temperature) fitted on the hospital's labelled studies, with what
they were fitted on (data digest, n per label, date) and the figures they gave, and the model
they belong to. The worker loads it (``CXR_SITE_CALIBRATION``) in place of the card's operating
point, and the SR, the audit and ``predict`` name it. A file made for other weights is refused:
thresholds do not carry over between models.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError


class SiteCalibrationError(ValueError):
    """A site file that cannot be used, with the reason."""


class CalibratedModel(BaseModel):
    name: str
    version: str
    weights_sha256: str


class SiteCalibration(BaseModel):
    """The content of a site file."""

    kind: str = Field("cxr-triage site calibration", frozen=True)
    model: CalibratedModel
    thresholds: dict[str, float]
    temperature: float = Field(gt=0)
    target: str  # e.g. "sensitivity 0.90" or "specificity 0.95"
    data: dict[str, Any]  # path, sha256, n, by_label
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    figures: dict[str, Any] = Field(default_factory=dict)  # at these thresholds, on that data

    def describe(self) -> str:
        n = self.data.get("n", "?")
        return f"site calibration {self.created_at[:10]} ({self.target}, n={n})"

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        # Written whole, then renamed: a worker never reads half a file.
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)


def load_site_calibration(path: Path, weights_sha256: str) -> SiteCalibration:
    """Read a site file and check it was made for the weights in use.

    Raises
    ------
    SiteCalibrationError
        If the file is missing, not a site file, or was made for another model.
    """
    try:
        site = SiteCalibration.model_validate(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise SiteCalibrationError(f"site calibration {path} does not exist") from None
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise SiteCalibrationError(
            f"{path} is not a cxr-triage site calibration: {first}"
        ) from None
    if site.model.weights_sha256 != weights_sha256:
        raise SiteCalibrationError(
            f"{path} was calibrated for {site.model.name} {site.model.version} (weights "
            f"{site.model.weights_sha256[:12]}), not the model in use (weights "
            f"{weights_sha256[:12]}): calibrate again with this model"
        )
    return site
