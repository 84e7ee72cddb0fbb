"""The four ensemble rules against hand-computed examples, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_allbag.model.networks import decide
from napari_allbag.model.rules import (
    RULES,
    decide_rule,
    decide_threshold,
    model_labels,
    rule_p_all,
)

# Rows: (model-A, model-B, combined), each (P(HEM), P(ALL)).
PROBS = np.array(
    [
        [[0.60, 0.40], [0.30, 0.70], [0.45, 0.55]],  # A and B disagree; 0.70 ALL is the highest
        [[0.95, 0.05], [0.40, 0.60], [0.45, 0.55]],  # HEM 0.95 beats two ALL votes
        [[0.20, 0.80], [0.10, 0.90], [0.97, 0.03]],  # A and B agree on ALL; combined says HEM
        [[0.75, 0.25], [0.25, 0.75], [0.50, 0.50]],  # ties everywhere: HEM 0.75 = ALL 0.75
        [[0.70, 0.30], [0.80, 0.20], [0.10, 0.90]],  # A and B agree on HEM; combined says ALL
    ]
)

# Hand-computed per rule: labels, confidence, P(ALL).
EXPECTED = {
    "max": ([1, 0, 0, 1, 1], [0.70, 0.95, 0.97, 0.75, 0.90], [0.70, 0.05, 0.03, 0.75, 0.90]),
    "mean": (
        [1, 0, 1, 1, 0],
        [0.55, 0.60, 1.73 / 3, 0.50, 1 - 1.4 / 3],
        [0.55, 0.40, 1.73 / 3, 0.50, 1.4 / 3],
    ),
    "agree": ([1, 1, 1, 1, 0], [0.55, 0.55, 0.85, 0.50, 0.75], [0.55, 0.55, 0.85, 0.50, 0.25]),
    "combined": ([1, 1, 0, 1, 1], [0.55, 0.55, 0.97, 0.50, 0.90], [0.55, 0.55, 0.03, 0.50, 0.90]),
}


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_matches_the_hand_computed_example(rule):
    labels, confidence, p_all = decide_rule(PROBS, rule)
    want_labels, want_confidence, want_p_all = EXPECTED[rule]
    assert labels.dtype == np.int64
    assert labels.tolist() == want_labels
    assert confidence == pytest.approx(want_confidence)
    assert p_all == pytest.approx(want_p_all)


def test_max_rule_equals_models_decide_where_nothing_ties():
    rng = np.random.default_rng(0)
    p_all = rng.random((500, 3))
    probs = np.stack([1 - p_all, p_all], axis=-1)
    labels, confidence, _ = decide_rule(probs, "max")
    want_labels, want_confidence = decide(probs)
    assert labels.tolist() == want_labels.tolist()
    assert confidence == pytest.approx(want_confidence)


def test_decide_sends_exact_ties_to_all_like_the_max_rule():
    # Row 3: HEM 0.75 (model-A) ties ALL 0.75 (model-B); a tie inside one model too.
    tied = np.concatenate([PROBS, [[[0.5, 0.5], [0.6, 0.4], [0.6, 0.4]]]])
    want_labels, want_confidence, _ = decide_rule(tied, "max")
    assert want_labels[3] == 1 and want_labels[5] == 0
    within = np.array([[[0.7, 0.7], [0.2, 0.3], [0.1, 0.6]]])  # one model's own tie
    assert decide(within)[0].tolist() == [1]
    labels, confidence = decide(tied)
    assert labels.tolist() == want_labels.tolist()
    assert confidence == pytest.approx(want_confidence)
    torch_labels, torch_confidence = decide(torch.from_numpy(tied).float())
    assert torch_labels.tolist() == want_labels.tolist()
    assert torch_confidence.numpy() == pytest.approx(want_confidence, abs=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_label_is_p_all_at_one_half(rule):
    rng = np.random.default_rng(1)
    p_all = rng.random((300, 3)).astype(np.float32)
    probs = np.stack([1 - p_all, p_all], axis=-1)
    labels, confidence, rule_all = decide_rule(probs, rule)
    assert np.array_equal(labels, decide_threshold(rule_all, 0.5))
    assert np.all(confidence >= 0.5)
    assert np.array_equal(rule_all, rule_p_all(probs, rule))


def test_threshold_moves_the_operating_point():
    p_all = np.array([0.05, 0.2, 0.5, 0.69, 0.7, 0.99])
    assert decide_threshold(p_all, 0.5).tolist() == [0, 0, 1, 1, 1, 1]
    assert decide_threshold(p_all, 0.2).tolist() == [0, 1, 1, 1, 1, 1]
    assert decide_threshold(p_all, 0.7).tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="0..1"):
        decide_threshold(p_all, 1.5)


def test_model_labels_and_bad_input():
    assert model_labels(PROBS).tolist() == [
        [0, 1, 1],
        [0, 1, 1],
        [1, 1, 0],
        [0, 1, 1],
        [0, 0, 1],
    ]
    with pytest.raises(ValueError, match="unknown ensemble rule"):
        decide_rule(PROBS, "vote")
    with pytest.raises(ValueError, match=r"\(N, 3, 2\)"):
        decide_rule(PROBS[:, :2], "max")
    empty = decide_rule(np.zeros((0, 3, 2)), "agree")
    assert [part.shape for part in empty] == [(0,), (0,), (0,)]
