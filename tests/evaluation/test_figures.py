"""The report's PNG figures: confusion matrix, ROC, reliability, the per-subject table."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from napari_allbag.evaluation.figures import (
    ReportData,
    confusion_png,
    per_subject_png,
    reliability_png,
    render_figures,
    roc_png,
    write_figures,
)
from tests.evaluation.report_data import decode_png, generated_report_data


def test_roc_area_matches_sklearn_and_one_class_has_none():
    data = generated_report_data()
    png, area = roc_png(data.y_true, data.p_all)
    assert area == pytest.approx(roc_auc_score(data.y_true, data.p_all))
    assert 0.7 < area < 1.0
    assert decode_png(png).shape[0] > 200
    png, area = roc_png(np.ones(5, int), np.linspace(0.1, 0.9, 5))
    assert area is None and decode_png(png).size


def test_every_figure_is_a_readable_png(tmp_path):
    data = generated_report_data()
    figures, numbers = render_figures(data)
    assert set(figures) == {"confusion_matrix", "roc_curve", "reliability", "per_subject"}
    assert len(numbers["per_subject"]) == 6 and numbers["auroc"] > 0.7
    shapes = {name: decode_png(png).shape for name, png in figures.items()}
    assert shapes["reliability"][1] > 1.6 * shapes["reliability"][0]  # two panels side by side
    single = decode_png(reliability_png(data.y_true, data.p_all))
    assert single.shape[1] < shapes["reliability"][1]
    paths = write_figures(tmp_path / "out", figures)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{name}.png" for name in figures
    )
    assert paths["roc_curve"].read_bytes() == figures["roc_curve"]
    no_subjects, _ = render_figures(ReportData(data.y_true, data.p_all))
    assert "per_subject" not in no_subjects


def test_confusion_and_long_tables_render():
    assert decode_png(confusion_png([0, 0, 1, 1], [0, 1, 1, 1])).size
    rows = [
        {
            "subject": str(i),
            "label": "all",
            "cells": 3,
            "correct": 2,
            "accuracy": 2 / 3,
            "sensitivity": 2 / 3,
        }
        for i in range(100)
    ]
    tall = decode_png(per_subject_png(rows))
    short = decode_png(per_subject_png(rows[:5]))
    assert tall.shape[0] > short.shape[0]
    assert decode_png(per_subject_png([])).size
