"""inference.decision through the one pipeline: rules, calibration, threshold, TTA, review."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.inference.decision import Decision, judge, resolve_decision
from napari_allbag.inference.pipeline import PipelineOptions, classify_cells
from napari_allbag.inference.tta import dihedral_views
from napari_allbag.model.calibration import apply_temperatures
from napari_allbag.model.networks import decide
from napari_allbag.model.rules import rule_p_all
from napari_allbag.model.trust import TrustSettings
from napari_allbag.progress import drive
from tests.model_factory import random_crops


def _crops(n=6, seed=0):
    return random_crops(n, 32, seed)


def test_default_pipeline_is_the_papers_rule(bundle):
    cells = drive(classify_cells(bundle, _crops(), PipelineOptions(batch_size=4)))
    labels, confidence = decide(cells.probs)
    assert cells.labels.tolist() == labels.tolist()
    assert cells.confidence == pytest.approx(confidence, abs=1e-6)
    assert np.all(np.isnan(cells.columns()["tta_spread"]))


def test_tta_of_rotation_invariant_crops_has_no_spread(bundle):
    symmetric = dihedral_views(_crops()).max(axis=0)  # the same under every flip and rotation
    options = PipelineOptions(batch_size=16, tta=True, rule="mean")
    cells = drive(classify_cells(bundle, symmetric, options))
    assert cells.spread == pytest.approx(np.zeros(6), abs=1e-5)
    plain = drive(classify_cells(bundle, symmetric, PipelineOptions(rule="mean")))
    assert cells.probs == pytest.approx(plain.probs, abs=1e-5)
    varied = drive(classify_cells(bundle, _crops(), options))
    assert varied.spread.max() > 1e-4


def test_temperatures_change_p_all_but_not_the_papers_labels():
    rng = np.random.default_rng(2)
    p = rng.random((200, 3))
    probs = np.stack([1 - p, p], axis=-1).astype(np.float32)
    trust = TrustSettings(temperatures=(2.0, 0.5, 1.5))
    judged = judge(probs, resolve_decision(trust))
    assert judged.labels.tolist() == decide(probs)[0].tolist()
    calibrated = rule_p_all(apply_temperatures(probs, trust.temperatures), "max")
    assert judged.p_all == pytest.approx(calibrated, abs=1e-6)


def test_threshold_decision_and_its_refusals():
    p = np.linspace(0.01, 0.99, 50)
    probs = np.repeat(np.stack([1 - p, p], axis=-1)[:, None], 3, axis=1)
    trust = TrustSettings(rule="combined", threshold={"threshold": 0.3, "rule": "combined"})
    decision = resolve_decision(trust, mode="threshold")
    judged = judge(probs, decision)
    assert judged.labels.tolist() == (p >= 0.3).astype(int).tolist()
    assert judged.review.tolist() == (np.abs(p - 0.3) < 0.1).tolist()
    assert set(judged.review_reason[judged.review]) == {"near threshold"}
    with pytest.raises(ValueError, match="--rule combined"):
        resolve_decision(trust, rule="max", mode="threshold")
    with pytest.raises(ValueError, match="no sensitivity threshold"):
        resolve_decision(TrustSettings(), mode="threshold")


def test_review_flags_disagreement_and_border():
    probs = np.array([[[0.9, 0.1], [0.1, 0.9], [0.2, 0.8]], [[0.9, 0.1], [0.8, 0.2], [0.95, 0.05]]])
    judged = judge(probs, Decision(), {"touches_border": [False, True], "area": [1, 2]})
    assert judged.review_reason.tolist() == ["models disagree", "cut by border"]
