"""Per-subject figures: cells, accuracy, and for ALL subjects the sensitivity.

A C-NMC subject (patient) is either ALL or healthy, so "how many of this patient's blasts did we
catch" is the figure a haematologist asks for first; for a healthy subject it is not defined
(None), and its accuracy is the specificity on that subject.

Imports numpy and the package's report module only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_allbag.evaluation.report import per_subject_accuracy

ALL = 1
#: Columns of a per-subject row, in the order tables show them.
SUBJECT_COLUMNS = ("subject", "label", "cells", "correct", "accuracy", "sensitivity")


def per_subject_rows(y_true, y_pred, subjects: Sequence[str | None]) -> list[dict[str, Any]]:
    """One row per subject (natural order), keys `SUBJECT_COLUMNS`; cells without a subject left out.

    `label` is the subject's true class ("all"/"hem"; "mixed" when its cells are of both);
    `sensitivity` is the share of the subject's ALL cells predicted ALL, for subjects with ALL
    cells, else None.
    """
    true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    names = np.asarray(list(subjects), dtype=object)
    if not len(true) == len(pred) == len(names):
        raise ValueError(
            f"lengths differ: {len(true)} labels, {len(pred)} predictions, {len(names)} subjects"
        )
    rows = []
    for subject, info in per_subject_accuracy(true, pred, list(names)).items():
        sensitivity = None
        blasts = (names == subject) & (true == ALL)
        if blasts.any():
            sensitivity = float((pred[blasts] == ALL).mean())
        rows.append({"subject": subject, **info, "sensitivity": sensitivity})
    return [{key: row[key] for key in SUBJECT_COLUMNS} for row in rows]
