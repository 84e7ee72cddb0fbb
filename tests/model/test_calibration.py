"""Temperature scaling, ECE and the sensitivity-first threshold on generated scores."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.model.calibration import (
    TEMPERATURE_BOUNDS,
    ReliabilityBins,
    apply_temperature,
    apply_temperatures,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    golden_minimum,
    log_softmax,
    reliability_bins,
    sensitivity_threshold,
)


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """P(ALL) drawn uniformly and labels drawn with exactly that probability: calibrated."""
    rng = np.random.default_rng(seed)
    p_all = rng.random(n)
    return p_all, (rng.random(n) < p_all).astype(np.int64)


def _sharpen(p_all: np.ndarray, power: float) -> np.ndarray:
    """Probabilities (N, 2) with the logits multiplied by `power`: over-confident for power > 1."""
    logit = np.log(p_all) - np.log1p(-p_all)
    sharp = 1.0 / (1.0 + np.exp(-power * logit))
    return np.stack([1.0 - sharp, sharp], axis=1)


def test_ece_of_calibrated_scores_is_near_zero_and_of_sharpened_ones_is_not():
    p_all, labels = _calibrated(100_000, seed=0)
    assert expected_calibration_error(p_all, labels) < 0.01
    sharp = _sharpen(np.clip(p_all, 1e-6, 1 - 1e-6), 3.0)
    assert expected_calibration_error(sharp, labels) > 0.1


def test_over_confident_model_gets_lower_ece_after_scaling():
    p_all, labels = _calibrated(20_000, seed=1)
    sharp = _sharpen(np.clip(p_all, 1e-6, 1 - 1e-6), 3.0)
    temperature = fit_temperature(sharp, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    scaled = apply_temperature(sharp, temperature)
    before = expected_calibration_error(sharp, labels)
    after = expected_calibration_error(scaled, labels)
    assert after < before / 4
    assert np.array_equal(scaled.argmax(axis=1), sharp.argmax(axis=1))  # labels unchanged
    assert scaled.sum(axis=1) == pytest.approx(np.ones(len(labels)))


def test_logits_and_probabilities_give_the_same_temperature():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 4, (3000, 2))
    labels = (rng.random(3000) < 0.5 + 0.3 * np.tanh(logits[:, 1] - logits[:, 0])).astype(int)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert fit_temperature(logits, labels, logits=True) == pytest.approx(
        fit_temperature(probs, labels), rel=1e-3
    )


def test_a_separable_split_keeps_temperature_one_instead_of_an_extreme_one():
    labels = np.array([0, 1] * 50)
    separable = np.eye(2)[labels] * 0.98 + 0.01
    # The NLL falls towards T = 0 until the bound: the split does not determine T.
    assert fit_temperature(separable, labels) == 1.0
    # With mistakes made at 0.99 confidence the optimum is interior again: soften (T > 1).
    mixed = separable.copy()
    mixed[:10] = mixed[:10, ::-1]
    assert 1.5 < fit_temperature(mixed, labels) < TEMPERATURE_BOUNDS[1]


def test_temperature_search_stays_bounded_and_robust():
    labels = np.array([0, 1] * 50)
    separable = np.eye(2)[labels] * 0.98 + 0.01
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(separable, labels[:10])
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(separable, 0.0)


def test_one_temperature_per_model():
    p_all, labels = _calibrated(5000, seed=3)
    p_all = np.clip(p_all, 1e-6, 1 - 1e-6)
    probs = np.stack([_sharpen(p_all, 2.0), _sharpen(p_all, 1.0), _sharpen(p_all, 0.5)], axis=1)
    temperatures = fit_temperatures(probs, labels)
    assert temperatures == pytest.approx((2.0, 1.0, 0.5), rel=0.15)
    scaled = apply_temperatures(probs, temperatures)
    assert scaled.shape == probs.shape
    assert scaled[:, 0] == pytest.approx(apply_temperature(probs[:, 0], temperatures[0]))


def test_reliability_bins_by_hand():
    p_all = np.array([0.9, 0.95, 0.2, 0.55, 0.5])
    labels = np.array([1, 0, 0, 1, 0])
    bins = reliability_bins(p_all, labels, bins=5)  # edges 0, .2, .4, .6, .8, 1
    assert isinstance(bins, ReliabilityBins)
    # (0.4, 0.6]: 0.55 and 0.5 | (0.6, 0.8]: HEM at 0.2, confidence 0.8 | (0.8, 1]: 0.9, 0.95
    assert bins.counts.tolist() == [0, 0, 2, 1, 2]
    assert bins.accuracy[2] == pytest.approx(0.5)  # 0.55 right, 0.5 (called ALL) wrong
    assert (bins.confidence[3], bins.accuracy[3]) == pytest.approx((0.8, 1.0))
    assert (bins.confidence[4], bins.accuracy[4]) == pytest.approx((0.925, 0.5))
    want = (2 * abs(0.5 - 0.525) + 1 * abs(1.0 - 0.8) + 2 * abs(0.5 - 0.925)) / 5
    assert bins.ece == pytest.approx(want)
    assert np.isnan(bins.accuracy[0])


def test_threshold_reaches_the_target_on_its_own_split():
    rng = np.random.default_rng(4)
    labels = (rng.random(2000) < 0.6).astype(np.int64)
    p_all = np.clip(rng.normal(0.35 + 0.3 * labels, 0.18), 0, 1)
    for target in (0.8, 0.95, 0.99):
        choice = sensitivity_threshold(p_all, labels, target)
        called = p_all >= choice.threshold
        assert choice.sensitivity == pytest.approx(called[labels == 1].mean())
        assert choice.sensitivity >= target
        assert choice.specificity == pytest.approx((~called[labels == 0]).mean())
        # No observed threshold meeting the target beats it: none has a higher specificity,
        # and none with the same specificity finds more ALL cells.
        for t in np.unique(p_all):
            sens = (p_all[labels == 1] >= t).mean()
            spec = (p_all[labels == 0] < t).mean()
            if sens >= target:
                assert spec <= choice.specificity + 1e-12
                if spec == pytest.approx(choice.specificity):
                    assert sens <= choice.sensitivity + 1e-12
    default = sensitivity_threshold(p_all, labels)
    assert default.target == 0.95 and default.to_dict()["threshold"] == default.threshold


def test_a_cleanly_separated_split_keeps_every_all_cell():
    # The target alone would allow P(ALL) >= 0.97 (19 of 20 ALL cells); every threshold down to
    # the least confident ALL cell keeps specificity 1, so the choice finds all 20.
    p_all = np.concatenate([np.linspace(0.90, 0.999, 20), np.linspace(0.01, 0.2, 20)])
    labels = np.array([1] * 20 + [0] * 20)
    choice = sensitivity_threshold(p_all, labels, target=0.95)
    assert choice.threshold == pytest.approx((0.90 + 0.2) / 2)  # halfway to the top HEM cell
    assert (choice.sensitivity, choice.specificity) == (1.0, 1.0)


def test_threshold_by_hand_and_bad_input():
    p_all = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.65, 0.4, 0.1])
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    choice = sensitivity_threshold(p_all, labels, target=0.8)  # 4 of 5 ALL cells: >= 0.6
    # 4 of 5 ALL cells: >= 0.6, set halfway down to the next score (0.4): the same calls
    assert choice.threshold == pytest.approx(0.5) and choice.sensitivity == 0.8
    assert choice.specificity == pytest.approx(2 / 3)
    assert sensitivity_threshold(p_all, labels, target=1.0).threshold == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no ALL cells"):
        sensitivity_threshold(p_all, np.zeros(8, int))
    with pytest.raises(ValueError, match="target"):
        sensitivity_threshold(p_all, labels, target=0.0)
    assert sensitivity_threshold([0.7], [1]).specificity is None


def test_log_softmax_matches_the_direct_formula_and_survives_large_values():
    values = np.array([[1.0, 2.0, 3.0], [1000.0, 1001.0, 999.0]])
    expected = values - values.max(axis=1, keepdims=True)
    expected = expected - np.log(np.exp(expected).sum(axis=1, keepdims=True))
    result = log_softmax(values, axis=1)
    assert np.isfinite(result).all()
    assert result == pytest.approx(expected)
    assert np.exp(result).sum(axis=1) == pytest.approx(np.ones(2))


@pytest.mark.parametrize("minimum", [-2.3, 0.0, 1.7])
def test_golden_minimum_finds_the_least_point_of_a_unimodal_function(minimum):
    assert golden_minimum(lambda x: (x - minimum) ** 2, -3.0, 3.0, 1e-6) == pytest.approx(
        minimum, abs=1e-5
    )
    # a minimum outside the interval: the search ends at the nearer bound
    assert golden_minimum(lambda x: x, -3.0, 3.0, 1e-6) == pytest.approx(-3.0, abs=1e-5)
