"""The uncertainty benchmark's metrics on cases whose answers are known."""

import os
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from calibration_metrics import (  # noqa: E402
    CalibrationAccumulator,
    auroc,
    boundary_band,
    fit_temperature,
    temperature_scaled,
)


def _two_class(confidence: float, correct_fraction: float, n: int = 10000):
    """n voxels, all predicting class 1 with ``confidence``; the first ``correct_fraction`` of them are class 1."""
    p = np.stack([np.full(n, 1 - confidence), np.full(n, confidence)])
    reference = (np.arange(n) < correct_fraction * n).astype(np.int64)
    return p, reference


def test_ece_is_zero_when_confidence_matches_accuracy_and_the_gap_otherwise():
    calibrated = CalibrationAccumulator()
    calibrated.add(*_two_class(0.8, 0.8), entropy=np.zeros(10000))
    assert calibrated.ece() == pytest.approx(0.0, abs=1e-9)
    overconfident = CalibrationAccumulator()
    overconfident.add(*_two_class(0.99, 0.5), entropy=np.zeros(10000))
    assert overconfident.ece() == pytest.approx(0.49, abs=1e-9)


def test_brier_and_nll_of_a_known_case():
    accumulator = CalibrationAccumulator()
    accumulator.add(*_two_class(0.8, 0.5, n=2), entropy=np.zeros(2))
    # one voxel right with p = 0.8, one wrong with p(true) = 0.2
    assert accumulator.summary()["brier"] == pytest.approx((2 * 0.2**2 + 2 * 0.8**2) / 2)
    assert accumulator.summary()["nll"] == pytest.approx(-(np.log(0.8) + np.log(0.2)) / 2)


def test_auroc_agrees_with_scikit_learn_and_its_limits():
    rng = np.random.default_rng(0)
    positives = rng.random(500) < 0.3
    scores = rng.random(500) + positives * 0.5
    scores[:50] = 0.25  # ties
    assert auroc(scores, positives) == pytest.approx(roc_auc_score(positives, scores))
    assert auroc(positives.astype(float), positives) == 1.0
    assert auroc(-positives.astype(float), positives) == 0.0
    assert auroc(np.ones(500), positives) == 0.5


def test_the_fitted_temperature_recovers_an_overconfident_models_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 60000)) * 3
    true_p = temperature_scaled(np.exp(logits), 2.0)  # the world is twice as uncertain as the model
    labels = (rng.random(60000)[None] > np.cumsum(true_p, 0)).sum(0)
    model_p = temperature_scaled(np.exp(logits), 1.0)
    assert fit_temperature([model_p], [labels]) == pytest.approx(2.0, rel=0.08)


def test_boundary_band_is_both_sides_of_the_boundary():
    reference = np.zeros((1, 20, 20), np.int64)
    reference[0, 5:15, 5:15] = 1
    band = boundary_band(reference, width=2)[0]
    assert band[5, 10] and band[3, 10] and band[6, 10] and not band[2, 10] and not band[7, 10]
    assert not band[10, 10] and not band[0, 0]
