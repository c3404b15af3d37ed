"""Metric values equal scikit-learn's on fixed inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from models.metrics import (
    breakdown,
    classification_report,
    expected_calibration_error,
    fit_temperature,
    softmax,
)

LABELS = ["normal", "covid", "pneumonia"]


@pytest.fixture
def fixed() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[y]
    return y, softmax(logits)


def test_report_matches_sklearn(fixed: tuple[np.ndarray, np.ndarray]) -> None:
    y, probs = fixed
    pred = probs.argmax(1)
    r = classification_report(y, probs, LABELS, n_boot=100)
    assert r["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert r["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    sens = recall_score(y, pred, average=None)
    ppv = precision_score(y, pred, average=None)
    f1 = f1_score(y, pred, average=None)
    for k, label in enumerate(LABELS):
        m = r["per_class"][label]
        assert m["sensitivity"] == pytest.approx(sens[k])
        assert m["ppv"] == pytest.approx(ppv[k])
        assert m["f1"] == pytest.approx(f1[k])
        spec = recall_score(y != k, pred != k)
        npv = precision_score(y != k, pred != k)
        assert m["specificity"] == pytest.approx(spec)
        assert m["npv"] == pytest.approx(npv)
        assert m["auroc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        low, high = m["auroc_ci95"]
        assert low <= m["auroc"] <= high
    assert r["macro_auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))


def test_undefined_metrics_are_none_not_zero() -> None:
    y = np.array([0, 0, 0])
    probs = np.array([[0.9, 0.05, 0.05]] * 3)
    r = classification_report(y, probs, LABELS, n_boot=0)
    assert r["per_class"]["covid"]["sensitivity"] is None
    assert r["per_class"]["normal"]["auroc"] is None
    assert r["macro_auroc"] is None


def test_breakdown_reveals_a_shortcut() -> None:
    # A "model" that is right on adults and always says normal on children.
    y = np.array([1, 1, 0, 0, 2, 2, 0, 0])
    probs = np.eye(3)[[1, 1, 0, 0, 0, 0, 0, 0]] * 0.8 + 0.2 / 3
    groups = {"age_group": ["adult"] * 4 + ["pediatric"] * 4}
    by = breakdown(y, probs, LABELS, groups, n_boot=0)["age_group"]
    assert by["adult"]["accuracy"] == 1.0
    assert by["pediatric"]["accuracy"] == 0.5
    assert by["pediatric"]["per_class"]["pneumonia"]["sensitivity"] == 0.0


def test_temperature_scaling_recovers_the_temperature() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2
    p = softmax(true_logits)
    y = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(true_logits * 3.0, y)  # an over-confident model: logits 3x too large
    assert t == pytest.approx(3.0, rel=0.1)


def test_ece() -> None:
    probs = np.array([[0.8, 0.1, 0.1]] * 10)
    y = np.array([0] * 8 + [1] * 2)  # 80% right at 80% confidence: calibrated
    assert expected_calibration_error(probs, y)["ece"] == pytest.approx(0.0, abs=1e-9)
    y_bad = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, y_bad)["ece"] == pytest.approx(0.3)
