"""Labelled image folders: listing, the optional manifest, and the saved split."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.labels import canonical

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``columns`` holds extra manifest columns (source, age group ...)."""

    path: Path
    label: str
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


class DatasetError(ValueError):
    """A dataset folder that cannot be used, with the reason."""


def list_dataset(root: Path, labels: tuple[str, ...] | None = None) -> list[Sample]:
    """List a folder-per-label dataset, joined with ``manifest.csv`` when present.

    The manifest's first two columns are ``file`` (relative to ``root``) and ``label``; any
    further columns are kept per sample for the breakdowns in the evaluation. Old label names
    (``viral_pneumonia``) are read as today's (``pneumonia``): see :data:`models.labels.ALIASES`.

    Raises
    ------
    DatasetError
        If the folder holds no labelled images, a manifest row names a missing file, or a label
        is not one of ``labels``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    manifest = root / "manifest.csv"
    samples: list[Sample] = []
    if manifest.is_file():
        with open(manifest, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or reader.fieldnames[:2] != ["file", "label"]:
                raise DatasetError(f"{manifest} must start with the columns file,label")
            extra = reader.fieldnames[2:]
            for row in reader:
                path = root / row["file"]
                if not path.is_file():
                    raise DatasetError(f"{manifest} names {row['file']}, which does not exist")
                samples.append(Sample(path, canonical(row["label"]), {c: row[c] for c in extra}))
    else:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    samples.append(Sample(path, canonical(folder.name)))
    if not samples:
        raise DatasetError(f"{root} holds no images in label folders (e.g. {root}/normal/x.png)")
    if labels is not None:
        unknown = sorted({s.label for s in samples} - set(labels))
        if unknown:
            raise DatasetError(f"labels {unknown} are not among the model's {list(labels)}")
    return samples


def split(
    samples: list[Sample], *, test: float = 0.2, validation: float = 0.1, seed: int = 0
) -> dict[str, list[Sample]]:
    """Seeded split stratified by label: ``test`` of all, then ``validation`` of the rest.

    The thesis's default: 80% train / 20% test, 10% of train for validation.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Sample]] = {"train": [], "validation": [], "test": []}
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        n_test = round(len(group) * test)
        n_val = round((len(group) - n_test) * validation)
        parts["test"] += [group[i] for i in order[:n_test]]
        parts["validation"] += [group[i] for i in order[n_test : n_test + n_val]]
        parts["train"] += [group[i] for i in order[n_test + n_val :]]
    return parts


def write_split(parts: dict[str, list[Sample]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "split"])
        for name, items in parts.items():
            for s in items:
                writer.writerow([s.key, s.label, name])


def read_split(path: Path, samples: list[Sample]) -> dict[str, list[Sample]]:
    by_key = {s.key: s for s in samples}
    parts: dict[str, list[Sample]] = {"train": [], "validation": [], "test": []}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["file"] not in by_key:
                raise DatasetError(f"saved split names {row['file']}, not in the dataset")
            parts[row["split"]].append(by_key[row["file"]])
    return parts


def summarise(samples: list[Sample]) -> dict[str, object]:
    """Counts by label and by every manifest column, for the model card."""
    out: dict[str, object] = {
        "n": len(samples),
        "by_label": dict(Counter(s.label for s in samples)),
    }
    columns = sorted({c for s in samples for c in s.columns})
    for column in columns:
        out[f"by_{column}"] = dict(
            Counter(f"{s.columns.get(column, '')}/{s.label}" for s in samples)
        )
    return out
