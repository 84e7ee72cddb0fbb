"""Review flags and their reasons."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.inference.review import ReviewPolicy, review_flags
from napari_allbag.model.rules import model_labels


def test_every_reason_and_their_order():
    p_all = np.array([0.95, 0.55, 0.10, 0.90, 0.52, 0.02])
    labels = np.array([[1, 1, 1], [1, 1, 1], [0, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 0]])
    spread = np.array([0.01, 0.02, 0.03, 0.30, 0.25, 0.0])
    border = np.array([False, False, False, False, True, False])
    nucleus = np.array([np.nan, 2.0, 1.0, 3.0, 0.4, 0.99])  # NaN: not measured (dark path)
    cells = {"touches_border": border, "nucleus_area_rbc": nucleus}
    policy = ReviewPolicy(threshold=0.5, band=0.1, spread_limit=0.2)
    flag, reason = review_flags(p_all, policy, labels, spread, cells)
    assert flag.tolist() == [False, True, True, True, True, True]
    assert reason.tolist() == [
        "",
        "near threshold",
        "models disagree",
        "TTA spread",
        "models disagree; near threshold; TTA spread; cut by border; small nucleus",
        "small nucleus",
    ]
    unflagged = review_flags(p_all, ReviewPolicy(min_nucleus=0.0), cells=cells)[1]
    assert "small nucleus" not in "".join(unflagged)


def test_band_follows_the_threshold_and_missing_inputs_are_not_checked():
    p_all = np.array([0.5, 0.25, 0.2, 0.4])
    flag, reason = review_flags(p_all, ReviewPolicy(threshold=0.25, band=0.05))
    assert flag.tolist() == [False, True, True, False]
    assert reason.tolist() == ["", "near threshold", "near threshold", ""]
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]])
    flag, reason = review_flags([0.1], ReviewPolicy(), model_labels(probs))
    assert reason.tolist() == ["models disagree"]


def test_bad_policy_and_misshapen_input():
    with pytest.raises(ValueError, match="review policy"):
        ReviewPolicy(band=-0.1)
    with pytest.raises(ValueError, match="spread has 1 rows"):
        review_flags([0.1, 0.2], ReviewPolicy(), spread=[0.0])
    flag, reason = review_flags(np.zeros(0))
    assert flag.shape == reason.shape == (0,)
