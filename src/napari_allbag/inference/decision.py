"""From the ensemble's probabilities to what a user is shown: rule, calibration, threshold, TTA
spread and review flags, for every front end alike (`inference.pipeline` calls `finish_cells`).

- The label: `decision="paper"` (default) is the rule's own label on the raw probabilities, so
  the paper's method is untouched (rule "max": the highest of the six wins, ties to ALL);
  `decision="threshold"` calls ALL where the calibrated ensemble P(ALL) reaches the bundle's
  sensitivity-first threshold (chosen at training for one rule, which must be the one in use).
- `p_all`: the ensemble's P(ALL) under the rule, after the bundle's temperatures when it has
  them (`model.calibration.apply_temperatures`). `confidence` keeps its meaning: the rule's own
  (uncalibrated) probability of its label (for "max" the winning one of the six); with
  `decision="threshold"` the calibrated probability of the label called.
- Test-time augmentation: probabilities of the 8 dihedral views (N, 8, 3, 2) are averaged; the
  spread is the standard deviation of the rule's P(ALL) across the views.
- `review` / `review_reason`: `inference.review.review_flags` (models disagree, P(ALL) near the
  threshold in use, TTA spread, cut by the border, small nucleus).

Imports numpy and the package's model and inference modules only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_allbag.defaults import DECISIONS
from napari_allbag.inference.review import ReviewPolicy, review_flags
from napari_allbag.model.calibration import apply_temperatures
from napari_allbag.model.rules import RULES, decide_rule, model_labels, rule_p_all
from napari_allbag.model.trust import TrustSettings

#: The segmentation table's columns that feed the review flags.
_CELL_CHECKS = ("touches_border", "nucleus_area_rbc")


@dataclass(frozen=True)
class Decision:
    """The settings of one run, resolved from the bundle and the pipeline's options."""

    rule: str = "max"
    mode: str = "paper"
    threshold: float = 0.5
    temperatures: tuple[float, ...] | None = None
    policy: ReviewPolicy = ReviewPolicy()

    @property
    def calibrated(self) -> bool:
        return self.temperatures is not None


def resolve_decision(
    trust: TrustSettings, rule: str | None = None, mode: str = "paper", band: float = 0.1
) -> Decision:
    """The `Decision` for a bundle's `trust` settings and the options' rule (None: the bundle's)
    and decision mode; ValueError with the fix when the threshold cannot be used."""
    rule = trust.rule if rule is None else rule
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; choose one of {', '.join(RULES)}")
    if mode not in DECISIONS:
        raise ValueError(f"unknown decision {mode!r}; choose one of {', '.join(DECISIONS)}")
    threshold = 0.5
    if mode == "threshold":
        if not trust.threshold:
            raise ValueError(
                "this bundle has no sensitivity threshold (trained before bundle format 2, or "
                "without ALL cells in its validation split): use --decision paper"
            )
        chosen_for = trust.threshold.get("rule", "max")
        if chosen_for != rule:
            raise ValueError(
                f"the bundle's threshold was chosen for rule {chosen_for!r}, not {rule!r}: "
                f"use --rule {chosen_for} with --decision threshold, or --decision paper"
            )
        threshold = float(trust.threshold["threshold"])
    policy = ReviewPolicy(threshold=threshold, band=band)
    return Decision(rule, mode, threshold, trust.temperatures, policy)


@dataclass
class Judged:
    """What `judge` adds to the probabilities: labels, confidence, P(ALL), spread, review."""

    probs: np.ndarray  # (N, 3, 2), averaged over the views with TTA
    labels: np.ndarray
    confidence: np.ndarray
    p_all: np.ndarray
    spread: np.ndarray | None
    review: np.ndarray
    review_reason: np.ndarray


def _spread(views: np.ndarray, decision: Decision) -> np.ndarray:
    n, n_views = views.shape[:2]
    flat = views.reshape(n * n_views, *views.shape[2:])
    if decision.calibrated:
        flat = apply_temperatures(flat, decision.temperatures)
    return rule_p_all(flat, decision.rule).reshape(n, n_views).std(axis=1).astype(np.float32)


def judge(probs: np.ndarray, decision: Decision, cells: Any = None) -> Judged:
    """Labels, confidence, calibrated P(ALL), TTA spread and review flags of (N, 3, 2)
    probabilities, or of (N, views, 3, 2) view probabilities (test-time augmentation); `cells`:
    the segmentation table whose border and nucleus columns feed the flags (`review_flags`)."""
    probs = np.asarray(probs, dtype=np.float32)
    spread = None
    if probs.ndim == 4:
        spread = _spread(probs, decision) if len(probs) else np.zeros(0, np.float32)
        probs = probs.mean(axis=1)
    shown = apply_temperatures(probs, decision.temperatures) if decision.calibrated else probs
    p_all = rule_p_all(shown, decision.rule) if len(probs) else np.zeros(0)
    if decision.mode == "threshold":
        labels = (p_all >= decision.threshold).astype(np.int64)
        confidence = np.where(labels == 1, p_all, 1.0 - p_all).astype(np.float32)
    elif len(probs):
        labels, confidence = decide_rule(probs, decision.rule)[:2]
        confidence = confidence.astype(np.float32)
    else:
        labels, confidence = np.zeros(0, np.int64), np.zeros(0, np.float32)
    checked = {
        name: column
        for name, column in (cells or {}).items()
        if name in _CELL_CHECKS and column is not None and len(column) == len(probs)
    }
    flag, reason = review_flags(
        p_all, decision.policy, model_labels(probs) if len(probs) else None, spread, checked
    )
    return Judged(probs, labels, confidence, p_all.astype(np.float32), spread, flag, reason)
