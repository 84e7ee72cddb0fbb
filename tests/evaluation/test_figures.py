"""Per-subject figures, the report's PNGs and the self-contained report.html."""

from __future__ import annotations

import base64
import re

import cv2
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
from napari_allbag.evaluation.per_subject import SUBJECT_COLUMNS, per_subject_rows
from napari_allbag.evaluation.report_html import (
    REPORT_NAME,
    build_report_html,
    html_table,
    run_metadata,
    write_report_html,
)
from napari_allbag.model.calibration import apply_temperature, fit_temperature


def _decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _generated(n: int = 600, seed: int = 0) -> ReportData:
    """An over-confident ensemble on 6 subjects (3 ALL, 3 HEM), with calibrated P(ALL) too:
    each cell's class is drawn with a known P(ALL), which the ensemble then sharpens."""
    rng = np.random.default_rng(seed)
    true_p = np.clip(rng.beta(0.7, 0.7, n), 0.01, 0.99)
    y_true = (rng.random(n) < true_p).astype(np.int64)
    ids = rng.integers(1, 4, n)
    subjects = [f"{i}" if label else f"H{i}" for i, label in zip(ids, y_true, strict=True)]
    logit = 3.0 * (np.log(true_p) - np.log1p(-true_p))
    p_all = 1 / (1 + np.exp(-logit))
    probs = np.stack([1 - p_all, p_all], axis=1)
    calibrated = apply_temperature(probs, fit_temperature(probs, y_true))[:, 1]
    return ReportData(y_true, p_all, None, calibrated, subjects)


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


def test_roc_area_matches_sklearn_and_one_class_has_none():
    data = _generated()
    png, area = roc_png(data.y_true, data.p_all)
    assert area == pytest.approx(roc_auc_score(data.y_true, data.p_all))
    assert 0.7 < area < 1.0
    assert _decode(png).shape[0] > 200
    png, area = roc_png(np.ones(5, int), np.linspace(0.1, 0.9, 5))
    assert area is None and _decode(png).size


def test_every_figure_is_a_readable_png(tmp_path):
    data = _generated()
    figures, numbers = render_figures(data)
    assert set(figures) == {"confusion_matrix", "roc_curve", "reliability", "per_subject"}
    assert len(numbers["per_subject"]) == 6 and numbers["auroc"] > 0.7
    shapes = {name: _decode(png).shape for name, png in figures.items()}
    assert shapes["reliability"][1] > 1.6 * shapes["reliability"][0]  # two panels side by side
    single = _decode(reliability_png(data.y_true, data.p_all))
    assert single.shape[1] < shapes["reliability"][1]
    paths = write_figures(tmp_path / "out", figures)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{name}.png" for name in figures
    )
    assert paths["roc_curve"].read_bytes() == figures["roc_curve"]
    no_subjects, _ = render_figures(ReportData(data.y_true, data.p_all))
    assert "per_subject" not in no_subjects


def test_confusion_and_long_tables_render():
    assert _decode(confusion_png([0, 0, 1, 1], [0, 1, 1, 1])).size
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
    tall = _decode(per_subject_png(rows))
    short = _decode(per_subject_png(rows[:5]))
    assert tall.shape[0] > short.shape[0]
    assert _decode(per_subject_png([])).size


def test_report_html_is_self_contained(tmp_path):
    data = _generated()
    figures, numbers = render_figures(data)
    run = run_metadata("bundles/<tiny>", "/data/cells", rule="max")
    assert {"bundle", "data folder", "date", "versions", "rule"} <= set(run)
    assert "torch" in run["versions"] and "numpy" in run["versions"]
    tables = {"Per subject": html_table(numbers["per_subject"])}
    page = build_report_html("Evaluation of <tiny>", run, figures, tables)
    assert "<tiny>" not in page and "&lt;tiny&gt;" in page  # escaped
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(b) for b in embedded] == list(figures.values())
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    assert page.count("<tr>") >= 6 + 1
    path = write_report_html(tmp_path, page)
    assert path.name == REPORT_NAME and path.read_text(encoding="utf-8") == page
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_NAME]
    assert html_table([]) == "<p>(none)</p>"
