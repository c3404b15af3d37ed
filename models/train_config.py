"""What a training run is asked for (``TrainConfig``) and the dataset and split it reads.

Shared by both recipes, scratch training (:mod:`models.training`) and Xception transfer from
cached features (:mod:`models.transfer_training`), so neither imports the other.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.data import Sample, list_datasets, read_split, split, write_split
from models.labels import LABELS

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Options of ``cxr-triage train`` (see its ``--help``)."""

    data: list[Path]  # one or more data folders, read together (models.data.list_datasets)
    out: Path
    arch: str = "residual_dense"
    mode: str = "scratch"
    size: int | None = None
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 0
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    imagenet_weights: Path | None = None
    name: str = "cxr-triage-cnn"
    version: str = "1.0.0"
    limit_per_label: int | None = None
    resume: bool = False
    progress: bool = True
    # Xception ec/ft train from cached lung-cropped features (models.features): where to keep them.
    cache: Path = Path.home() / ".cache" / "cxr-triage" / "features"
    lung_model: Path | None = None  # default: the shipped models/lungs
    crop_lungs: bool = True  # scratch models: crop to the lungs (False: whole image, as 1.x)
    intensity: str = "none"  # "equalised": the crop's histogram (models.imaging.prepare)
    balance: float = 0.5  # Xception ec/ft: site balance within a class (TopConfig.balance)
    max_false_flag: float = 0.05  # operating point: site-averaged share of normals flagged

    def for_card(self) -> dict[str, Any]:
        """The options as the card records them: folder names, not this machine's paths."""

        def name(v: Any) -> Any:
            if isinstance(v, Path):
                return v.name
            return [name(x) for x in v] if isinstance(v, list) else v

        skip = ("out", "cache", "progress")
        return {k: name(v) for k, v in asdict(self).items() if k not in skip}


def dataset_and_split(cfg: TrainConfig) -> tuple[list[Sample], dict[str, list[Sample]]]:
    """The dataset (optionally limited per label) and its seeded split, saved in ``cfg.out``."""
    samples = list_datasets(cfg.data, LABELS)
    if cfg.limit_per_label:
        kept: dict[str, int] = {}
        limited = []
        for s in samples:
            if kept.get(s.label, 0) < cfg.limit_per_label:
                kept[s.label] = kept.get(s.label, 0) + 1
                limited.append(s)
        samples = limited
    cfg.out.mkdir(parents=True, exist_ok=True)
    split_file = cfg.out / "split.csv"
    if cfg.resume and split_file.is_file():
        parts = read_split(split_file, samples)
    else:
        parts = split(
            samples, test=cfg.test_fraction, validation=cfg.validation_fraction, seed=cfg.seed
        )
        write_split(parts, split_file)
    logger.info("split: %s", {k: len(v) for k, v in parts.items()})
    return samples, parts
