"""Calibration (temperature scaling, ECE, reliability bins) and a sensitivity-first threshold.

Temperature scaling (Guo et al. 2017): one scalar T per model divides the logits before the
softmax, T fitted on the validation split by minimising the negative log-likelihood. It changes no
model's label (argmax is unchanged) but makes "0.88" mean "right 88 % of the time". Probabilities
are rescaled in log space: softmax(log p / T) equals softmax(logits / T), since log p differs from
the logits only by a per-cell constant.

Imports numpy only (no scipy: see `golden_minimum`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The range T is searched in; a model needing more is broken, not miscalibrated.
TEMPERATURE_BOUNDS = (0.05, 20.0)
ECE_BINS = 15
#: Probabilities are clipped here before the log (a float32 softmax can give exact 0 or 1).
_TINY = 1e-12


def log_softmax(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(values)) along `axis`, computed stably (the largest value subtracted first)."""
    shifted = values - values.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def golden_minimum(function, low: float, high: float, tolerance: float = 1e-4) -> float:
    """Where a unimodal `function` is least on [low, high], to `tolerance` (golden-section search).

    Plain Python rather than scipy.optimize: importing that in a worker thread held the GIL for
    0.2-0.3 s and froze napari before the first epoch (benchmarks/bench_gui_latency.py).
    """
    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = function(c), function(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = function(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = function(d)
    return (a + b) / 2.0


def _log_scores(scores, logits: bool) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"expected scores of shape (N, classes), got {array.shape}")
    return array if logits else np.log(np.clip(array, _TINY, 1.0))


def _nll(log_scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    log_probs = log_softmax(log_scores / temperature, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(scores, labels, logits: bool = False) -> float:
    """The temperature T that minimises the NLL of `labels` under softmax(scores / T).

    `scores` are probabilities (N, classes) (default) or logits (`logits=True`); labels are class
    indices. The NLL is convex in 1/T, so a golden-section search on log T finds the optimum; it is
    kept within `TEMPERATURE_BOUNDS`. Where every cell is already classified right, the NLL only
    falls as T goes to 0, so the split does not determine T: T = 1 is kept (no scaling rather than
    an extreme one that would make every later call look certain).
    """
    log_scores = _log_scores(scores, logits)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(log_scores) or len(labels) == 0:
        raise ValueError(
            f"need as many labels as cells (> 0), got {len(labels)} and {len(log_scores)}"
        )
    if np.array_equal(log_scores.argmax(axis=1), labels):
        return 1.0
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    log_t = golden_minimum(lambda value: _nll(log_scores, labels, math.exp(value)), low, high)
    best = float(math.exp(log_t))
    return best if _nll(log_scores, labels, best) <= _nll(log_scores, labels, 1.0) else 1.0


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Probabilities (..., classes) rescaled by `temperature`: softmax(log p / T), float64."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p = np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, 1.0))
    return np.exp(log_softmax(log_p / float(temperature), axis=-1))


def fit_temperatures(probs, labels) -> tuple[float, ...]:
    """One temperature per model from ensemble probabilities (N, models, classes)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"expected probabilities of shape (N, models, classes), got {probs.shape}")
    return tuple(fit_temperature(probs[:, i], labels) for i in range(probs.shape[1]))


def apply_temperatures(probs, temperatures) -> np.ndarray:
    """Ensemble probabilities (N, models, classes), each model rescaled by its own temperature."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[1] != len(temperatures):
        raise ValueError(
            f"need one temperature per model, got {len(temperatures)} for {probs.shape}"
        )
    return np.stack([apply_temperature(probs[:, i], t) for i, t in enumerate(temperatures)], axis=1)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: edges (bins + 1,), per bin the mean confidence, the accuracy
    (NaN where a bin is empty) and the number of cells."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence|."""
        filled = self.counts > 0
        total = self.counts.sum()
        if not total:
            return 0.0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((gaps * self.counts[filled]).sum() / total)


def _p_all(p_all) -> np.ndarray:
    array = np.asarray(p_all, dtype=np.float64)
    return array[..., 1] if array.ndim == 2 and array.shape[1] == 2 else array.reshape(-1)


def reliability_bins(p_all, labels, bins: int = ECE_BINS) -> ReliabilityBins:
    """Reliability bins of binary P(ALL) (N,) (or probabilities (N, 2)) against labels (1 = ALL).

    Standard ECE binning: the confidence of the predicted class (ALL where P(ALL) >= 0.5), in
    `bins` equal-width bins over 0..1, each (low, high]. With two classes the confidence is at
    least 0.5, so only the upper half of the bins fill.
    """
    p_all = _p_all(p_all)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(p_all):
        raise ValueError(f"{len(p_all)} probabilities but {len(labels)} labels")
    predicted = (p_all >= 0.5).astype(np.int64)
    confidence = np.where(predicted == 1, p_all, 1.0 - p_all)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, (predicted == labels).astype(float), minlength=bins) / counts
    return ReliabilityBins(np.linspace(0.0, 1.0, bins + 1), mean_confidence, accuracy, counts)


def expected_calibration_error(p_all, labels, bins: int = ECE_BINS) -> float:
    """ECE of binary P(ALL) against labels, `bins` equal-width bins (see `reliability_bins`)."""
    return reliability_bins(p_all, labels, bins).ece


@dataclass(frozen=True)
class ThresholdChoice:
    """A P(ALL) threshold and the sensitivity/specificity it gave on the cells it was chosen on
    (specificity None where there were no HEM cells)."""

    threshold: float
    sensitivity: float
    specificity: float | None
    target: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "target_sensitivity": self.target,
        }


def _lowest_at_same_specificity(threshold: float, scores_all, scores_hem) -> float:
    """The lowest observed ALL score that calls no more HEM cells ALL than `threshold` does."""
    below = scores_hem[scores_hem < threshold]
    floor = float(below.max()) if len(below) else -math.inf
    return float(scores_all[(scores_all > floor) & (scores_all <= threshold)].min())


def _midway_below(threshold: float, p_all) -> float:
    """Halfway from `threshold` down to the next lower score (or 0): the same calls on these
    cells, with a margin on both sides for new cells and rounded probabilities."""
    below = p_all[p_all < threshold]
    return (float(below.max()) if len(below) else 0.0) / 2 + threshold / 2


def sensitivity_threshold(p_all, labels, target: float = 0.95) -> ThresholdChoice:
    """The sensitivity-first operating point: call ALL where P(ALL) >= the returned threshold.

    Of all thresholds that keep the ALL sensitivity at or above `target` on these cells, this is
    the HIGHEST one. Issue 11 says "the lowest threshold that keeps sensitivity >= target", but
    sensitivity only falls as the threshold rises, so the lowest such threshold is always 0 (call
    everything ALL, specificity 0); the one meant is the threshold just low enough to keep the
    target, which misses at most (1 - target) of the ALL cells and calls the fewest HEM cells ALL
    (the highest specificity). It is the P(ALL) of the ceil(target * n_ALL)-th most confident ALL
    cell, an observed score as in `sklearn.metrics.roc_curve`. It is then lowered, down to the
    least confident ALL cell still above every HEM cell it lets through, since that costs no
    specificity and can only gain sensitivity (on a cleanly separated split: every ALL cell found),
    and finally set halfway to the next lower score, which makes the same calls on these cells.
    """
    p_all = _p_all(p_all)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    if len(labels) != len(p_all):
        raise ValueError(f"{len(p_all)} probabilities but {len(labels)} labels")
    scores_all = np.sort(p_all[labels == 1])[::-1]
    if not len(scores_all):
        raise ValueError("no ALL cells: a sensitivity cannot be measured")
    needed = math.ceil(round(float(target) * len(scores_all), 9))
    threshold = float(scores_all[max(needed, 1) - 1])
    hem = labels == 0
    threshold = _lowest_at_same_specificity(threshold, scores_all, p_all[hem])
    threshold = _midway_below(threshold, p_all)
    called = p_all >= threshold
    specificity = float((~called[hem]).mean()) if hem.any() else None
    return ThresholdChoice(threshold, float(called[labels == 1].mean()), specificity, float(target))
