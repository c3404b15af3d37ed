"""PNG plots for people: training curves, confusion matrix, ROC, reliability, group gaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[float]], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(cm: list[list[int]], labels: list[str], path: Path, title: str = "") -> Path:
    plt = _plt()
    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(arr, cmap="Blues")
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(
                j,
                i,
                str(arr[i, j]),
                ha="center",
                va="center",
                color="white" if arr[i, j] > arr.max() / 2 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roc(
    y: np.ndarray, probs: np.ndarray, labels: list[str], report: dict[str, Any], path: Path
) -> Path:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for k, label in enumerate(labels):
        if len(set((y == k).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(y == k, probs[:, k])
        auc = report["per_class"][label]["auroc"]
        ax.plot(fpr, tpr, label=f"{label} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reliability(report: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    bins = report["reliability"]
    fig, ax = plt.subplots(figsize=(5, 5))
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=0.09, alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.plot(centres, [b["confidence"] for b in bins], "o", color="black", label="confidence")
    ax.set_xlabel("top-class confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {report['ece']:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def groups(by_column: dict[str, dict[str, Any]], labels: list[str], path: Path) -> Path:
    """Accuracy and per-class sensitivity for every group of every column, side by side."""
    plt = _plt()
    columns = list(by_column)
    fig, axes = plt.subplots(
        1, max(1, len(columns)), figsize=(5 * max(1, len(columns)), 4), squeeze=False
    )
    for ax, column in zip(axes[0], columns, strict=False):
        names = list(by_column[column])
        metrics = ["accuracy", *[f"sens. {lab}" for lab in labels]]
        width = 0.8 / len(metrics)
        for m, metric in enumerate(metrics):
            values = []
            for name in names:
                rep = by_column[column][name]
                v = rep["accuracy"] if m == 0 else rep["per_class"][labels[m - 1]]["sensitivity"]
                values.append(np.nan if v is None else v)
            ax.bar(np.arange(len(names)) + m * width, values, width, label=metric)
        ax.set_xticks(
            np.arange(len(names)) + 0.4 - width / 2,
            [f"{n}\n(n={by_column[column][n]['n']})" for n in names],
        )
        ax.set_ylim(0, 1.05)
        ax.set_title(f"by {column}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
