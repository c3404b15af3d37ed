"""The model card: what a model folder holds, and how to check it before use."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.keras"


class ModelCardError(ValueError):
    """A model folder whose contents do not match its card."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelCard:
    """``card.json``: identity, inputs, preprocessing, calibration and evaluation of a model."""

    name: str
    version: str
    architecture: str
    mode: str
    labels: list[str]
    input_size: int
    channels: int
    normalisation: str
    gradcam_layer: str
    temperature: float = 1.0
    # "lungs": the input is the lung box found by the lung model named in ``lung_model``
    # (name, version, weights_sha256); "none": the whole image (models 1.x).
    crop: str = "none"
    # "equalised": the crop's histogram is equalised before the model (models.imaging.prepare).
    intensity: str = "none"
    lung_model: dict[str, str] = field(default_factory=dict)
    weights_file: str = WEIGHTS_FILE
    weights_sha256: str = ""
    preprocessing: str = (
        "DICOM: Modality LUT, VOI LUT or window (percentile 0.5-99.5 when absent, full range for "
        "8-bit), MONOCHROME1 inverted; PNG/JPEG: luminance, /255 or percentile window for 16-bit; "
        "letterboxed (black padding, centred) to a square, decimated then bilinear resize"
    )
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: The flag thresholds the model ships with and how they were chosen: ``thresholds``
    #: ({class: probability}), ``rule`` (words), ``max_false_flag``. Empty for older models.
    operating_point: dict[str, Any] = field(default_factory=dict)
    #: The familiarity index (models.familiarity): ``file``, ``sha256``, ``weights_sha256``,
    #: ``limit``, ``quantile`` and how it was fitted. Empty: no image is called low confidence.
    familiarity: dict[str, Any] = field(default_factory=dict)
    #: What each label means in the training data (e.g. which collections are "normal").
    label_definitions: str = ""
    intended_use: str = (
        "Research and workflow triage of adult PA chest radiographs; results are shown to "
        "radiologists as unverified suggestions. Not for diagnostic use."
    )
    limitations: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ModelCardError(f"card.json has unknown fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelCardError(f"card.json is incomplete: {exc}") from exc

    def save(self, folder: Path) -> None:
        (folder / CARD_FILE).write_text(self.to_json())
        (folder / "MODEL_CARD.md").write_text(render_markdown(self))

    @classmethod
    def load(cls, folder: Path) -> ModelCard:
        path = Path(folder) / CARD_FILE
        if not path.is_file():
            raise ModelCardError(f"{folder} has no {CARD_FILE}: not a cxr-triage model folder")
        return cls.from_json(path.read_text())


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _familiarity_lines(f: dict[str, Any]) -> list[str]:
    """The card's familiarity index in words and a table of what it calls low confidence."""
    if not f:
        return ["No familiarity index: no result is called low confidence."]
    lines = [
        f"`{f['file']}` (SHA-256 `{f['sha256']}`): {f['rule']}. Limit {f['limit']:.3f}, fitted "
        f"on {f['n_fit']} training films of {', '.join(f['sites'])}, limit on {f['n_limit']} "
        f"validation films, {f['dims']} directions, {f['date']}. An image beyond it is reported "
        "as low confidence (priority at least soon) in the SC, SR, audit and metrics.",
        "",
        "| site | test films | low confidence (site trained on) | low confidence with the site "
        "left out of the index |",
        "|---|---|---|---|",
    ]
    left_out = f.get("site_left_out", {})
    for site, r in f.get("test_by_site", {}).items():
        out = left_out.get(site, {}).get("low_confidence")
        lines.append(
            f"| {site} | {r['n']} | {100 * r['low_confidence']:.1f}% | "
            + ("–" if out is None else f"{100 * out:.1f}%")
            + " |"
        )
    return lines


def render_markdown(card: ModelCard) -> str:
    lines = [
        f"# Model card: {card.name} {card.version}",
        "",
        f"- Architecture: `{card.architecture}` ({card.mode})",
        f"- Labels (output order): {', '.join(f'`{x}`' for x in card.labels)}",
        f"- Input: {card.input_size}×{card.input_size}×{card.channels}, "
        f"normalisation `{card.normalisation}`",
        f"- Grad-CAM layer: `{card.gradcam_layer}`",
        f"- Input crop: `{card.crop}`"
        + (
            f" (lung model {card.lung_model.get('name')} {card.lung_model.get('version')}, "
            f"SHA-256 `{card.lung_model.get('weights_sha256')}`)"
            if card.lung_model
            else ""
        ),
        f"- Intensity: `{card.intensity}`",
        f"- Temperature (calibration on the validation split): {card.temperature:.3f}",
        f"- Weights: `{card.weights_file}`, SHA-256 `{card.weights_sha256}`",
        "",
        "## Preprocessing",
        "",
        card.preprocessing,
        "",
        "## Operating point",
        "",
        (
            "Flag thresholds (calibrated probability): "
            + ", ".join(f"{k} ≥ {v:.3f}" for k, v in op["thresholds"].items())
            + f". {op.get('rule', '')}"
            if (op := card.operating_point)
            else "None in the card: the worker's configured thresholds apply."
        ),
        "",
        "## Low confidence",
        "",
        *_familiarity_lines(card.familiarity),
        "",
        "## What the labels mean",
        "",
        card.label_definitions or "See docs/model.md.",
        "",
        "## Intended use",
        "",
        card.intended_use,
        "",
        "## Training data",
        "",
    ]
    for key, value in card.training.items():
        lines.append(
            f"- {key}: {json.dumps(value) if isinstance(value, dict | list) else _fmt(value)}"
        )
    lines += ["", "## Metrics (internal test split)", ""]
    summary = card.metrics
    for key in ("n", "accuracy", "macro_auroc", "ece"):
        if key in summary:
            lines.append(f"- {key}: {_fmt(summary[key])}")
    sites = summary.get("by_site_at_operating_point", {})
    if sites:
        lines += [
            "",
            "### By site, at the operating point (internal test split: these sites were trained "
            "on; see docs/model.md for sites held out)",
            "",
            "| site | n | macro AUROC | specificity | normals flagged COVID-19 | COVID-19 "
            "sensitivity | pneumonia sensitivity |",
            "|---|---|---|---|---|---|---|",
        ]
        for site, m in sites.items():
            cells = [
                m.get(k)
                for k in (
                    "macro_auroc",
                    "specificity",
                    "false_covid_rate",
                    "covid_sensitivity",
                    "pneumonia_sensitivity",
                )
            ]
            lines.append(
                f"| {site} | {m.get('n')} | "
                + " | ".join("–" if c is None else _fmt(c) for c in cells)
                + " |"
            )
    for column, groups in summary.get("by_column", {}).items():
        lines += ["", f"### By {column}", "", "| group | n | accuracy |", "|---|---|---|"]
        for group, m in groups.items():
            lines.append(f"| {group} | {m.get('n')} | {_fmt(m.get('accuracy'))} |")
    lines += ["", "## Limitations", "", card.limitations or "See docs/model.md.", ""]
    return "\n".join(lines)
