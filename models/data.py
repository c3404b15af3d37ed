"""Labelled image folders: listing, the optional manifest, and the saved split."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.labels import canonical
from models.sites import SITE_COLUMN, site_of, trains

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass(frozen=True)
class Sample:
    """One labelled image; ``columns`` holds extra manifest columns (source, age group ...)."""

    path: Path
    label: str
    columns: dict[str, str] = field(default_factory=dict)
    #: The data folder's name when several are read together (it prefixes the key).
    dataset: str = ""

    @property
    def key(self) -> str:
        key = f"{self.path.parent.name}/{self.path.name}"
        return f"{self.dataset}/{key}" if self.dataset else key

    @property
    def group(self) -> str:
        """What must not be split apart: the manifest's ``group`` (study, patient), else the key."""
        return self.columns.get("group") or self.key


class DatasetError(ValueError):
    """A dataset folder that cannot be used, with the reason."""


def list_dataset(root: Path, labels: tuple[str, ...] | None = None) -> list[Sample]:
    """List a folder-per-label dataset, joined with ``manifest.csv`` when present.

    ``root`` may also be a manifest file itself (any name ending ``.csv``): its paths are then
    relative to the folder it is in (or absolute). The manifest's first two columns are
    ``file`` and ``label``; any further columns are kept per sample for the breakdowns in the
    evaluation, and a ``site`` column is derived from ``source`` (:mod:`models.sites`). Old
    label names (``viral_pneumonia``) are read as today's (``pneumonia``): see
    :data:`models.labels.ALIASES`.

    Raises
    ------
    DatasetError
        If the folder holds no labelled images, a manifest row has no label or names a missing
        file, or a label is not one of ``labels``.
    """
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        manifest, root = root, root.parent
    elif root.is_dir():
        manifest = root / "manifest.csv"
    else:
        raise DatasetError(f"{root} is neither a folder nor a .csv manifest")
    samples: list[Sample] = []
    if manifest.is_file():
        with open(manifest, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or reader.fieldnames[:2] != ["file", "label"]:
                raise DatasetError(f"{manifest} must start with the columns file,label")
            extra = reader.fieldnames[2:]
            for line, row in enumerate(reader, start=2):
                if not (row.get("label") or "").strip():
                    raise DatasetError(f"{manifest} line {line}: {row['file']} has no label")
                path = root / row["file"]
                if not path.is_file():
                    raise DatasetError(f"{manifest} names {row['file']}, which does not exist")
                columns = {c: row[c] or "" for c in extra}
                if columns.get("source") and SITE_COLUMN not in columns:
                    columns[SITE_COLUMN] = site_of(columns["source"], columns.get("age_group", ""))
                samples.append(Sample(path, canonical(row["label"].strip()), columns))
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


def list_datasets(roots: list[Path], labels: tuple[str, ...] | None = None) -> list[Sample]:
    """:func:`list_dataset` over several folders; each folder's name then prefixes the keys.

    One folder keeps its plain keys (``label/file``), so splits saved before stay readable.
    """
    if len(roots) == 1:
        return list_dataset(roots[0], labels)
    names = [Path(r).name for r in roots]
    if len(set(names)) != len(names):
        raise DatasetError(f"data folders must have different names, got {names}")
    return [
        Sample(s.path, s.label, s.columns, name)
        for root, name in zip(roots, names, strict=True)
        for s in list_dataset(root, labels)
    ]


def split(
    samples: list[Sample], *, test: float = 0.2, validation: float = 0.1, seed: int = 0
) -> dict[str, list[Sample]]:
    """Seeded split stratified by label and **grouped**: ``test`` of all, then ``validation``.

    The thesis's default: 80% train / 20% test, 10% of train for validation. Images of one
    ``group`` (the manifest's study or patient; else each image alone) always land in the same
    part, so copies of one study never sit on both sides. A group is stratified by its first
    image's label. Within a label, groups are shuffled and taken whole until the part's share of
    images is reached. Images of evaluation-only sources (:func:`models.sites.trains`) all go to
    the test split, outside those shares: they are never trained or calibrated on.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Sample]] = {"train": [], "validation": [], "test": []}
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    by_label: dict[str, list[list[Sample]]] = {}
    for members in groups.values():
        if not trains(members[0].columns):
            parts["test"] += members
            continue
        by_label.setdefault(members[0].label, []).append(members)
    for label in sorted(by_label):
        label_groups = by_label[label]
        n_images = sum(len(g) for g in label_groups)
        n_test = round(n_images * test)
        n_val = round((n_images - n_test) * validation)
        taken = 0
        for i in rng.permutation(len(label_groups)):
            members = label_groups[i]
            name = "test" if taken < n_test else "validation" if taken < n_test + n_val else "train"
            parts[name] += members
            taken += len(members)
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


#: Manifest columns that identify, not describe: no breakdown by them (one row per study).
NOT_BROKEN_DOWN = frozenset({"group"})


def breakdown_columns(samples: list[Sample]) -> dict[str, list[str]]:
    """Each manifest column a report is broken down by, with its value per sample."""
    names = sorted({c for s in samples for c in s.columns} - NOT_BROKEN_DOWN)
    return {c: [s.columns.get(c, "") for s in samples] for c in names}


def summarise(samples: list[Sample]) -> dict[str, object]:
    """Counts by label and by every manifest column, for the model card."""
    out: dict[str, object] = {
        "n": len(samples),
        "by_label": dict(Counter(s.label for s in samples)),
    }
    columns = sorted({c for s in samples for c in s.columns} - NOT_BROKEN_DOWN)
    for column in columns:
        out[f"by_{column}"] = dict(
            Counter(f"{s.columns.get(column, '')}/{s.label}" for s in samples)
        )
    return out
