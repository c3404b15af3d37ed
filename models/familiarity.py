"""How far an image lies from the data the model was trained on: "low confidence" as an answer.

A classifier gives confident probabilities for any input, also for a film from a scanner, a
population or a processing chain it has never seen: that is where it fails silently
(docs/model.md, held out by site). This index measures, in the classifier's own pooled
features, the distance of an image to the nearest training site, and the worker reports an
image beyond the limit as **low confidence** instead of as a confident triage.

The distance is a Mahalanobis distance with one covariance shared by the sites (Lee et al.
2018, "A simple unified framework for detecting out-of-distribution samples"), kept small
as a probabilistic PCA (Tipping & Bishop 1999): the top ``dims`` within-site directions each
with its own variance, the rest with one common variance, so a feature vector that leaves the
training data in any direction counts, and the file stays well under a megabyte. The limit is
a quantile of the distances of held-back images of the training sites (validation split):
at quantile 0.99, about 1% of films like the training data are called low confidence.

Nothing here imports TensorFlow: the features come from the loaded model
(:meth:`models.loader.LoadedModel.checked_logits`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

#: The index file in a model folder; the card's ``familiarity`` names it with its SHA-256.
FAMILIARITY_FILE = "familiarity.npz"
#: Share of held-back training-site films allowed beyond the limit.
DEFAULT_QUANTILE = 0.99
DEFAULT_DIMS = 64


class FamiliarityError(ValueError):
    """Features that cannot make or use an index, with the reason."""


@dataclass(frozen=True)
class FamiliarityIndex:
    """Site centres and a shared within-site covariance (probabilistic PCA) of pooled features."""

    centres: np.ndarray  # (sites, D): each training site's mean feature vector
    components: np.ndarray  # (k, D): the top within-site directions, orthonormal rows
    variances: np.ndarray  # (k,): the variance along each
    residual_variance: float  # the mean variance of every other direction
    sites: tuple[str, ...]
    limit: float = float("inf")  # distance beyond which an image is unfamiliar

    @property
    def dims(self) -> int:
        return int(self.centres.shape[1])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Per row of ``features`` ``(N, D)``: the distance to the nearest site, scaled so that
        a typical training image is near 1 (the root mean squared standardised coordinate)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dims:
            raise FamiliarityError(f"features of shape {x.shape}, the index needs (N, {self.dims})")
        best = np.full(len(x), np.inf)
        for centre in self.centres:
            r = x - centre
            z = r @ self.components.T
            inside = (z**2 / self.variances).sum(axis=1)
            outside = np.maximum((r**2).sum(axis=1) - (z**2).sum(axis=1), 0.0)
            best = np.minimum(best, inside + outside / self.residual_variance)
        return np.sqrt(best / self.dims)

    def novelty(self, features: np.ndarray) -> np.ndarray:
        """Distance over the limit: above 1.0, an image is unlike the training data."""
        return self.distances(features) / self.limit

    def with_limit(
        self, held_back: np.ndarray, quantile: float = DEFAULT_QUANTILE
    ) -> FamiliarityIndex:
        """The index with its limit at ``quantile`` of held-back training-site films' distances."""
        if not 0.5 <= quantile < 1.0:
            raise FamiliarityError(f"quantile must be in [0.5, 1), not {quantile}")
        if len(held_back) < 20:
            raise FamiliarityError(f"{len(held_back)} held-back images: at least 20 set a limit")
        return replace(self, limit=float(np.quantile(self.distances(held_back), quantile)))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            centres=self.centres.astype(np.float32),
            components=self.components.astype(np.float32),
            variances=self.variances.astype(np.float64),
            residual_variance=np.float64(self.residual_variance),
            sites=np.array(self.sites),
            limit=np.float64(self.limit),
        )
        return buffer.getvalue()

    def save(self, path: Path) -> str:
        """Write the index; return the file's SHA-256 (for the card)."""
        data = self.to_bytes()
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path) -> FamiliarityIndex:
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(
                    centres=f["centres"].astype(np.float64),
                    components=f["components"].astype(np.float64),
                    variances=f["variances"],
                    residual_variance=float(f["residual_variance"]),
                    sites=tuple(str(s) for s in f["sites"]),
                    limit=float(f["limit"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise FamiliarityError(f"{path}: not a familiarity index ({exc})") from exc


def fit(
    features: np.ndarray,
    sites: Sequence[str] | np.ndarray,
    dims: int = DEFAULT_DIMS,
    min_per_site: int = 20,
) -> FamiliarityIndex:
    """An index of ``features`` ``(N, D)`` from the training sites ``sites`` (one per row).

    Sites with fewer than ``min_per_site`` images are pooled under "other" (a centre needs
    enough films to be an estimate). The limit is unset: see :meth:`FamiliarityIndex.with_limit`.
    """
    x = np.asarray(features, np.float64)
    labels = np.asarray(list(sites))
    if x.ndim != 2 or len(x) != len(labels):
        raise FamiliarityError(f"{len(labels)} site names for features of shape {x.shape}")
    counts = {s: int((labels == s).sum()) for s in set(labels.tolist())}
    labels = np.array([s if counts[s] >= min_per_site else "other" for s in labels.tolist()])
    names = tuple(sorted(set(labels.tolist())))
    if len(x) < 2 * dims or any(int((labels == s).sum()) < 2 for s in names):
        raise FamiliarityError(
            f"{len(x)} images in {len(names)} site(s): too few for a {dims}-direction index"
        )
    centres = np.stack([x[labels == s].mean(axis=0) for s in names])
    within = x - centres[np.searchsorted(names, labels)]
    # The covariance's eigenvectors from the SVD of the centred rows (never the D x D matrix).
    _, singular, vt = np.linalg.svd(within, full_matrices=False)
    eigen = singular**2 / max(len(x) - len(names), 1)
    k = min(dims, len(eigen) - 1)
    total = float(within.var(axis=0, ddof=0).sum() * len(x) / max(len(x) - len(names), 1))
    rest = max(total - float(eigen[:k].sum()), 1e-12) / max(x.shape[1] - k, 1)
    return FamiliarityIndex(
        centres=centres,
        components=vt[:k],
        variances=np.maximum(eigen[:k], rest),
        residual_variance=rest,
        sites=names,
    )
