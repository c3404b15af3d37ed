"""Low confidence as an answer: the familiarity index, the decision, and what results say."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest

from dicom_node.results import codes, wording
from dicom_node.results.algorithm import Algorithm
from dicom_node.results.sc import build_gradcam_sc
from dicom_node.results.sr import ImageResult, build_report
from dicom_node.results.triage import Triage
from dicom_node.uids import new_uid
from models.card import ModelCard, ModelCardError
from models.familiarity import FamiliarityError, FamiliarityIndex, fit
from tests import factories
from tests.test_classifier import CLI
from tests.tiny_model import make_dataset, train_tiny
from worker.decision import OperatingPoint

T = {"covid": 0.5, "pneumonia": 0.5}
POINT = OperatingPoint(dict(T), "model card")


def _sites(rng: np.random.Generator, n: int, dims: int = 24) -> tuple[np.ndarray, list[str]]:
    """Two sites: Gaussian clouds with their own centres and one shared, uneven covariance."""
    scales = np.linspace(0.2, 3.0, dims)
    centres = {"a": np.zeros(dims), "b": np.full(dims, 8.0)}
    rows, names = [], []
    for i in range(n):
        site = "ab"[i % 2]
        rows.append(centres[site] + rng.normal(size=dims) * scales)
        names.append(site)
    return np.array(rows), names


def test_the_index_calls_what_the_training_sites_never_showed_low_confidence() -> None:
    rng = np.random.default_rng(3)
    x, sites = _sites(rng, 2000)
    held, _ = _sites(rng, 1000)
    index = fit(x, sites, dims=8).with_limit(held, 0.99)
    fresh, _ = _sites(rng, 4000)
    low = index.novelty(fresh) > 1.0
    assert 0.002 < low.mean() < 0.03  # ~1% of films like the training data
    # A film at a site's centre is familiar; one halfway between the sites, or one far off the
    # training data in directions it hardly varies in, is not.
    centre = np.zeros((1, 24))
    between = np.full((1, 24), 4.0)
    off = np.zeros((1, 24))
    off[0, :12] = 4.0  # 4 in each of the twelve narrowest directions (scales 0.2-1.6)
    assert index.novelty(centre)[0] < 1.0
    assert index.novelty(between)[0] > 1.0 and index.novelty(off)[0] > 1.0
    assert index.sites == ("a", "b")


def test_the_index_round_trips_and_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x, sites = _sites(rng, 400)
    index = fit(x, sites, dims=8).with_limit(x[:100], 0.95)
    digest = index.save(tmp_path / "f.npz")
    again = FamiliarityIndex.load(tmp_path / "f.npz")
    assert len(digest) == 64 and again.limit == index.limit and again.sites == index.sites
    assert np.allclose(again.distances(x[:50]), index.distances(x[:50]), rtol=1e-5)
    with pytest.raises(FamiliarityError, match="needs"):
        index.distances(x[:, :5])
    with pytest.raises(FamiliarityError, match="too few"):
        fit(x[:10], sites[:10], dims=8)
    with pytest.raises(FamiliarityError, match="at least 20"):
        index.with_limit(x[:5])
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(FamiliarityError, match="not a familiarity index"):
        FamiliarityIndex.load(tmp_path / "bad.npz")


def test_low_confidence_lifts_routine_never_lowers_a_flag() -> None:
    normal = {"normal": 0.9, "covid": 0.05, "pneumonia": 0.05}
    covid = {"normal": 0.1, "covid": 0.85, "pneumonia": 0.05}
    assert POINT.image(normal).low_confidence is None  # no index: not assessed
    usual = POINT.image(normal, 0.6)
    assert usual.low_confidence is False and usual.priority == "routine"
    unlike = POINT.image(normal, 1.7)
    assert (unlike.band, unlike.priority, unlike.low_confidence) == ("not flagged", "soon", True)
    flagged = POINT.image(covid, 3.0)
    assert (flagged.label, flagged.priority, flagged.low_confidence) == ("covid", "urgent", True)
    # One image unlike the training data makes the study's result low confidence.
    study, images = POINT.decide([normal, normal], [0.5, 1.2])
    assert [i.low_confidence for i in images] == [False, True]
    assert (study.label, study.priority, study.low_confidence) == ("normal", "soon", True)
    study, _ = POINT.decide([normal, normal])
    assert study.low_confidence is None and study.priority == "routine"


def test_results_say_low_confidence_everywhere_a_reader_looks() -> None:
    low = Triage("normal", "not flagged", "soon", 0.9, T, "model card", low_confidence=True)
    assert "low confidence" in wording.headline(low)
    assert wording.viewer_line(low) == "AI SOON: Not flagged, LOW CONFIDENCE, not for diagnosis"
    assert wording.caution(low) and wording.caution(replace(low, low_confidence=False)) is None
    assert "LOW CONFIDENCE" in wording.summary(low, [{"normal": 0.9, "covid": 0.1}])
    for label, band in (("pneumonia", "indeterminate"), ("covid", "flagged")):
        t = Triage(label, band, "soon", 0.444, T, low_confidence=True)
        text = wording.series_description(t, "heatmap")
        assert text.startswith("AI SOON lowconf") and len(text) <= 64

    src = factories.radiograph(rows=400, columns=320, bits=12)
    grey = np.repeat(np.zeros((400, 320), np.uint8)[..., None], 3, axis=-1)
    algorithm = Algorithm("cxr-test", "9.9", "ab" * 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # single-component patient names
        sc = build_gradcam_sc(
            src, grey, triage=low, heatmap_label=None, algorithm=algorithm,
            series_instance_uid=new_uid(), sop_instance_uid=new_uid(), instance_number=1,
        )  # fmt: skip
        sr = build_report(
            [ImageResult(src, low, {"normal": 0.9, "covid": 0.06, "pneumonia": 0.04}, heatmap=sc)],
            low,
            evidence=[src, sc],
            algorithm=algorithm,
            series_instance_uid=new_uid(),
            sop_instance_uid=new_uid(),
            device_uid=new_uid(),
        )
    # The SC's strip has one more line than a usual result's (the caution).
    usual = replace(low, low_confidence=False, priority="routine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = build_gradcam_sc(
            src, grey, triage=usual, heatmap_label=None, algorithm=algorithm,
            series_instance_uid=new_uid(), sop_instance_uid=new_uid(), instance_number=1,
        )  # fmt: skip
    assert sc.Rows > plain.Rows and sc.SeriesDescription.startswith("AI SOON lowconf normal")
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    read = hd.sr.srread(buf)
    confidence = [
        item.ConceptCodeSequence[0].CodeValue
        for item in _walk(read.ContentSequence)
        if item.ValueType == "CODE"
        and item.ConceptNameCodeSequence[0].CodeValue == codes.MODEL_CONFIDENCE.value
    ]
    # The study's (document level) and the image's.
    assert confidence == [codes.CONFIDENCE_CODES[True].value] * 2


def _walk(items: Any) -> Any:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 90 a label: the validation split that sets the limit needs at least 20 films.
    return train_tiny(tmp_path_factory.mktemp("tiny"), per_label=90)


@pytest.mark.slow  # over 5 s on 2 cores (pytest --durations)
def test_familiarity_command_writes_an_index_the_loader_checks(
    trained: Path, tmp_path: Path
) -> None:
    from models.loader import load_model

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    data = make_dataset(tmp_path / "data", 90)  # the same seeded data the model was trained on
    report = tmp_path / "familiarity.json"
    proc = subprocess.run(
        [*CLI, "familiarity", "--model", str(folder), "--data", str(data), "--dims", "4",
         "--quantile", "0.9", "--json", str(report), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(report.read_text())
    assert figures["n_fit"] > 0 and set(figures["test_by_site"]) == {"site_a", "site_b"}
    assert "left out of the index" in proc.stdout
    card = ModelCard.load(folder)
    assert card.familiarity["sha256"] and card.familiarity["weights_sha256"] == card.weights_sha256
    model = load_model(folder)
    assert model.familiarity is not None
    (pred,) = model.predict([np.random.default_rng(1).random((120, 100))])
    assert pred.novelty is not None and pred.novelty > 0
    # A changed index is refused like changed weights.
    (folder / card.familiarity["file"]).write_bytes(b"changed")
    with pytest.raises(ModelCardError, match="familiarity"):
        load_model(folder)
    # Without its split the command says so and writes nothing.
    bare = tmp_path / "bare"
    shutil.copytree(trained, bare)
    (bare / "split.csv").unlink()
    proc = subprocess.run(
        [*CLI, "familiarity", "--model", str(bare), "--data", str(data), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "split.csv" in proc.stderr
    assert not (bare / "familiarity.npz").exists()
