"""Review flags: which cells a human should look at, and why.

A cell is flagged when the models disagree on its label, when its P(ALL) lies within a band around
the decision threshold, when its test-time-augmentation spread is high, when the image border
cuts it, or when its nucleus is smaller than a red cell (bright-field, `defaults.SMALL_NUCLEUS_RBC`:
a faint nucleus the stain caught only in part, or no white cell at all, a platelet clump or red
cells overlapping). Each flagged cell gets its reasons joined by "; ", in that order.

Imports numpy and `defaults` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_allbag.defaults import SMALL_NUCLEUS_RBC

REASON_DISAGREE = "models disagree"
REASON_NEAR = "near threshold"
REASON_SPREAD = "TTA spread"
REASON_BORDER = "cut by border"
REASON_SMALL_NUCLEUS = "small nucleus"


@dataclass(frozen=True)
class ReviewPolicy:
    """When to flag: |P(ALL) - threshold| < band, TTA spread > spread_limit, or a nucleus
    under min_nucleus red-cell areas."""

    threshold: float = 0.5
    band: float = 0.1
    spread_limit: float = 0.1
    min_nucleus: float = SMALL_NUCLEUS_RBC

    def __post_init__(self) -> None:
        limits = (self.band, self.spread_limit, self.min_nucleus)
        if not 0.0 <= self.threshold <= 1.0 or min(limits) < 0:
            raise ValueError(f"invalid review policy {self}: threshold in 0..1, the rest >= 0")


def _column(values, n: int, name: str, dtype) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=dtype)
    if array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} rows, expected {n}")
    return array


def _reason_masks(p_all, policy, model_labels, spread, cells):
    """(reason, mask) for each check whose input was given."""
    n = len(p_all)
    labels = _column(model_labels, n, "model_labels", np.int64)
    spread = _column(spread, n, "spread", np.float64)
    cells = cells or {}
    border = _column(cells.get("touches_border"), n, "touches_border", bool)
    nucleus = _column(cells.get("nucleus_area_rbc"), n, "nucleus_area_rbc", np.float64)
    checks = []
    if labels is not None:
        labels = labels.reshape(n, -1)
        checks.append((REASON_DISAGREE, (labels != labels[:, :1]).any(axis=1)))
    checks.append((REASON_NEAR, np.abs(p_all - policy.threshold) < policy.band))
    if spread is not None:
        checks.append((REASON_SPREAD, spread > policy.spread_limit))
    if border is not None:
        checks.append((REASON_BORDER, border.reshape(-1)))
    if nucleus is not None:  # NaN (not measured: dark path, a crop's guessed scale) is no flag
        checks.append((REASON_SMALL_NUCLEUS, nucleus.reshape(-1) < policy.min_nucleus))
    return checks


def review_flags(
    p_all,
    policy: ReviewPolicy = ReviewPolicy(),
    model_labels=None,
    spread=None,
    cells: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`(flag, reason)` per cell: flag bool (N,), reason str (N,) (object array, "" if unflagged).

    `p_all` (N,) is the ensemble's P(ALL); `model_labels` (N, models) each model's label (e.g.
    `model.rules.model_labels`); `spread` (N,) the TTA spread; `cells` the segmentation's table
    (or any mapping) whose "touches_border" (N,) and "nucleus_area_rbc" (N,) columns are checked
    where present. Inputs left at None are not checked.
    """
    p_all = np.asarray(p_all, dtype=np.float64).reshape(-1)
    checks = _reason_masks(p_all, policy, model_labels, spread, cells)
    reasons = np.array(
        ["; ".join(name for name, mask in checks if mask[i]) for i in range(len(p_all))],
        dtype=object,
    ).reshape(-1)
    flag = np.array([bool(reason) for reason in reasons], dtype=bool)
    return flag, reasons
