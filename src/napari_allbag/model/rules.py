"""Ways to turn the three models' probabilities into one label, one confidence and one P(ALL).

Input everywhere: probabilities (N, 3, 2) in the order model-A, model-B, combined (dim 1) and
CLASS_NAMES = ("hem", "all") (dim 2), as `model.networks.Ensemble` returns them.

Rules (the authors' code carries all four; the paper's text uses "max"):

- ``max``: the single highest of the six probabilities wins (Liu & Long, Sec. 2.6).
- ``mean``: the average of the three models' probabilities.
- ``agree``: model-A's and model-B's label where they agree, else the combined model's.
- ``combined``: the combined model alone.

Every rule also gives the ensemble's P(ALL) for that cell, chosen so that the rule's label is
exactly ``p_all >= 0.5`` (for probabilities that sum to 1 per model): a threshold other than 0.5 (`decide_threshold`) moves the operating
point of the same rule. Exact ties go to ALL everywhere (a missed blast costs more than a second
look at a normal cell).

Imports numpy only.
"""

from __future__ import annotations

import numpy as np

from napari_allbag.defaults import ENSEMBLE_RULES

RULES = ENSEMBLE_RULES
DEFAULT_RULE = "max"
#: Index of ALL along the class axis (CLASS_NAMES = ("hem", "all")).
ALL = 1


def _as_probs(probs) -> np.ndarray:
    array = np.asarray(probs, dtype=np.float64)
    if array.ndim != 3 or array.shape[1:] != (3, 2):
        raise ValueError(f"expected probabilities of shape (N, 3, 2), got {array.shape}")
    return array


def _max_rule_p_all(probs: np.ndarray) -> np.ndarray:
    """P(ALL) of the paper's rule: the winning probability when ALL wins, else 1 - it.

    Ties to ALL: ALL wins when the highest ALL probability is at least the highest HEM one.
    """
    best_all = probs[:, :, ALL].max(axis=1)
    best_hem = probs[:, :, 1 - ALL].max(axis=1)
    return np.where(best_all >= best_hem, best_all, 1.0 - best_hem)


def _agree_rule_p_all(probs: np.ndarray) -> np.ndarray:
    """Mean P(ALL) of model-A and model-B where their labels agree, else the combined model's."""
    p_a, p_b, p_combined = probs[:, 0, ALL], probs[:, 1, ALL], probs[:, 2, ALL]
    agree = (p_a >= 0.5) == (p_b >= 0.5)
    return np.where(agree, (p_a + p_b) / 2.0, p_combined)


def rule_p_all(probs, rule: str = DEFAULT_RULE) -> np.ndarray:
    """The ensemble's P(ALL) per cell (N,) under `rule` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; choose one of {', '.join(RULES)}")
    probs = _as_probs(probs)
    if rule == "max":
        return _max_rule_p_all(probs)
    if rule == "mean":
        return probs[:, :, ALL].mean(axis=1)
    if rule == "agree":
        return _agree_rule_p_all(probs)
    return probs[:, 2, ALL].copy()


def decide_threshold(p_all, threshold: float = 0.5) -> np.ndarray:
    """Labels (N,) int64: ALL (1) where P(ALL) is at or above `threshold`, else HEM (0)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in 0..1, got {threshold}")
    return (np.asarray(p_all, dtype=np.float64) >= float(threshold)).astype(np.int64)


def decide_rule(probs, rule: str = DEFAULT_RULE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(labels, confidence, p_all)` per cell under `rule`, all shaped (N,).

    labels are int64 class indices (1 = ALL); confidence is the probability of the chosen label
    (for "max" the winning one of the six, as `model.networks.decide` reports it); p_all float64.
    """
    p_all = rule_p_all(probs, rule)
    labels = decide_threshold(p_all, 0.5)
    if rule == "max":  # the comparison itself, exact even for probabilities not summing to 1
        probs = _as_probs(probs)
        labels = (probs[:, :, ALL].max(axis=1) >= probs[:, :, 1 - ALL].max(axis=1)).astype(np.int64)
    confidence = np.where(labels == ALL, p_all, 1.0 - p_all)
    return labels, confidence, p_all


def model_labels(probs) -> np.ndarray:
    """Each model's own label (N, 3) int64 (model-A, model-B, combined), ties to ALL."""
    return (_as_probs(probs)[:, :, ALL] >= 0.5).astype(np.int64)
