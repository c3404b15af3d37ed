"""Fit a model folder's familiarity index from its own split, and measure what it catches.

The index is fitted on the pooled features of the model's training split (up to ``per_site``
films a site), its limit set on the validation split, and it is judged two ways on the test
split: how many films of the training sites it calls low confidence (the cost: a reader is
asked to look), and, **leaving each site out of the index in turn**, how many films of a site
it has not seen it calls low confidence (what it is for). The backbone itself saw every site,
so the second figure is if anything an underestimate of what a truly new hospital gives.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np

from models.data import Sample
from models.evaluation import Scored, score
from models.familiarity import (
    DEFAULT_DIMS,
    DEFAULT_QUANTILE,
    FAMILIARITY_FILE,
    FamiliarityError,
    FamiliarityIndex,
    fit,
)
from models.loader import LoadedModel
from models.sites import SITE_COLUMN

logger = logging.getLogger(__name__)


def _site(s: Sample) -> str:
    return s.columns.get(SITE_COLUMN) or s.dataset or "unknown"


def subsample(samples: list[Sample], per_site: int, seed: int = 0) -> list[Sample]:
    """At most ``per_site`` films of each site, drawn with a fixed seed (all of a smaller site)."""
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[Sample]] = {}
    for s in samples:
        by_site.setdefault(_site(s), []).append(s)
    out: list[Sample] = []
    for site in sorted(by_site):
        members = by_site[site]
        picked = rng.permutation(len(members))[:per_site]
        out += [members[i] for i in sorted(picked)]
    return out


def _features(model: LoadedModel, samples: list[Sample], what: str, progress: bool) -> Scored:
    scored = score(model, samples, progress=progress, desc=f"features ({what})")
    if scored.features is None:
        raise FamiliarityError(f"{model.card.name}: the model has no pooling layer to measure")
    return scored


def _rates(index: FamiliarityIndex, scored: Scored, sites: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per site: films, and the share called low confidence."""
    assert scored.features is not None
    low = index.novelty(scored.features) > 1.0
    return {
        site: {"n": int((sites == site).sum()), "low_confidence": float(low[sites == site].mean())}
        for site in sorted(set(sites.tolist()))
    }


def fit_for_model(
    model: LoadedModel,
    parts: dict[str, list[Sample]],
    *,
    per_site: int = 500,
    quantile: float = DEFAULT_QUANTILE,
    dims: int = DEFAULT_DIMS,
    progress: bool = True,
) -> tuple[FamiliarityIndex, dict[str, Any]]:
    """The index for ``model`` from its split ``parts`` (train, validation, test), and a report.

    Raises :class:`FamiliarityError` when a part is empty or too small.
    """
    for name in ("train", "validation", "test"):
        if not parts.get(name):
            raise FamiliarityError(f"the split has no {name} images")
    train = _features(model, subsample(parts["train"], per_site), "train", progress)
    val = _features(model, subsample(parts["validation"], per_site // 2), "validation", progress)
    test = _features(model, subsample(parts["test"], per_site // 2), "test", progress)
    assert train.features is not None and val.features is not None
    train_sites = np.array([_site(s) for s in train.samples])
    val_sites = np.array([_site(s) for s in val.samples])
    test_sites = np.array([_site(s) for s in test.samples])

    index = fit(train.features, train_sites, dims).with_limit(val.features, quantile)
    report: dict[str, Any] = {
        "n_fit": len(train.samples),
        "n_limit": len(val.samples),
        "quantile": quantile,
        "dims": index.components.shape[0],
        "limit": index.limit,
        "sites": list(index.sites),
        "test_by_site": _rates(index, test, test_sites),
    }
    # Each training site left out of the index in turn: is a hospital it never saw caught?
    held_out: dict[str, Any] = {}
    for site in sorted(set(train_sites.tolist())):
        keep, keep_val = train_sites != site, val_sites != site
        if (~keep).sum() < 20 or keep_val.sum() < 20 or (test_sites == site).sum() == 0:
            continue
        others = fit(train.features[keep], train_sites[keep], dims).with_limit(
            val.features[keep_val], quantile
        )
        rates = _rates(others, test, test_sites)
        seen = [r for s, r in rates.items() if s != site]
        held_out[site] = {
            "n": rates[site]["n"],
            "low_confidence": rates[site]["low_confidence"],
            "seen_sites_low_confidence": float(
                sum(r["low_confidence"] * r["n"] for r in seen) / max(sum(r["n"] for r in seen), 1)
            ),
        }
        logger.info(
            "site %s left out of the index: %.1f%% of its films low confidence",
            site,
            100 * rates[site]["low_confidence"],
        )
    report["site_left_out"] = held_out
    return index, report


def card_entry(
    model: LoadedModel, sha256: str, report: dict[str, Any], data: list[str]
) -> dict[str, Any]:
    """What the card says of the index (``ModelCard.familiarity``)."""
    return {
        "file": FAMILIARITY_FILE,
        "sha256": sha256,
        "weights_sha256": model.card.weights_sha256,
        "limit": report["limit"],
        "quantile": report["quantile"],
        "dims": report["dims"],
        "sites": report["sites"],
        "n_fit": report["n_fit"],
        "n_limit": report["n_limit"],
        "data": data,
        "date": datetime.now(UTC).date().isoformat(),
        "rule": (
            f"distance to the nearest training site (shared-covariance Mahalanobis on pooled "
            f"features) beyond the {100 * report['quantile']:g}th percentile of the validation "
            "split's: low confidence"
        ),
        "test_by_site": report["test_by_site"],
        "site_left_out": report["site_left_out"],
    }
