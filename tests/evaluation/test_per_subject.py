"""evaluation.per_subject: one row per subject, with the ALL subjects' sensitivity."""

from __future__ import annotations

import pytest

from napari_allbag.evaluation.per_subject import SUBJECT_COLUMNS, per_subject_rows


def test_per_subject_rows_by_hand():
    y_true = [1, 1, 1, 0, 0, 1, 0]
    y_pred = [1, 0, 1, 0, 1, 1, 0]
    subjects = ["2", "2", "10", "H1", "H1", None, "H1"]
    rows = per_subject_rows(y_true, y_pred, subjects)
    assert [row["subject"] for row in rows] == ["2", "10", "H1"]  # natural order, None left out
    assert all(tuple(row) == SUBJECT_COLUMNS for row in rows)
    assert [row["cells"] for row in rows] == [2, 1, 3]
    assert [row["accuracy"] for row in rows] == pytest.approx([0.5, 1.0, 2 / 3])
    assert [row["sensitivity"] for row in rows] == [0.5, 1.0, None]
    assert [row["label"] for row in rows] == ["all", "all", "hem"]
    with pytest.raises(ValueError, match="lengths differ"):
        per_subject_rows(y_true, y_pred[:3], subjects)


def test_a_mixed_subject_is_labelled_mixed_with_its_sensitivity():
    rows = per_subject_rows([0, 0, 1, 1], [0, 1, 1, 0], ["7", "7", "7", "7"])
    assert rows[0]["label"] == "mixed" and rows[0]["sensitivity"] == 0.5
