"""Table 1 figures against scikit-learn, the side-by-side text, per-subject accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report
from sklearn.metrics import confusion_matrix as sk_confusion

from napari_allbag.evaluation.metrics import (
    classification_table,
    ensemble_report,
    format_confusion,
    format_per_subject,
    format_report,
    format_table,
    per_subject_accuracy,
)


def _noisy(seed: int, n: int = 200, flip: float = 0.2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.where(rng.random(n) < flip, 1 - y, y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
    y, p = _noisy(seed, flip=0.1 + 0.15 * seed)
    table = classification_table(y, p)
    report = classification_report(
        y, p, labels=[0, 1], target_names=["hem", "all"], output_dict=True
    )
    for name in ("hem", "all"):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert table["per_class"][name][ours] == pytest.approx(report[name][theirs])
        assert table["per_class"][name]["support"] == report[name]["support"]
    for key, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
        assert table["weighted_avg"][key] == pytest.approx(report["weighted avg"][theirs])
    assert table["weighted_avg"]["support"] == len(y)
    assert table["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert table["confusion_matrix"] == sk_confusion(y, p, labels=[0, 1]).tolist()
    json.dumps(table)


def test_names_and_zero_division():
    # No cell predicted HEM: HEM precision is 0, not NaN (scikit-learn's zero_division=0).
    table = classification_table(["hem", "all", "all"], ["all", "all", "all"])
    assert table["per_class"]["hem"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert table["per_class"]["all"]["recall"] == 1.0
    assert table["confusion_matrix"] == [[0, 1], [0, 2]]
    with pytest.raises(ValueError, match="Unknown class"):
        classification_table(["hem"], ["blast"])
    with pytest.raises(ValueError, match="differ in length"):
        classification_table([0, 1], [0])


def test_format_table_side_by_side():
    y, p = _noisy(0)
    tables = {
        "model-A": classification_table(y, p),
        "model-B": classification_table(y, 1 - p),
        "combined": classification_table(y, y),
        "ensemble": classification_table(y, p),
    }
    text = format_table(tables)
    lines = text.splitlines()
    assert all(name in lines[0] for name in tables)
    hem_row = next(line for line in lines if line.startswith("HEM"))
    weighted = next(line for line in lines if line.startswith("weighted avg"))
    assert f"{tables['model-B']['per_class']['hem']['precision']:.2f}" in hem_row
    assert hem_row.split()[-1] == str(tables["combined"]["per_class"]["hem"]["support"])
    assert weighted.split()[-1] == str(len(y))
    assert weighted.count("1.00") >= 3  # the perfect "combined" column
    confusion = format_confusion(tables)
    assert str(tables["model-A"]["confusion_matrix"][0][0]) in confusion
    with pytest.raises(ValueError, match="not on the same cells"):
        format_table(
            {"a": classification_table([0, 1], [0, 1]), "b": classification_table([0], [0])}
        )


def test_per_subject_accuracy():
    y = np.array([1, 1, 1, 0, 0, 0, 1])
    p = np.array([1, 0, 1, 0, 0, 1, 1])
    subjects = ["1", "1", "1", "H1", "H1", "H1", None]
    result = per_subject_accuracy(y, p, subjects)
    assert set(result) == {"1", "H1"}
    assert result["1"] == {
        "cells": 3,
        "correct": 2,
        "accuracy": pytest.approx(2 / 3),
        "label": "all",
    }
    assert result["H1"]["label"] == "hem" and result["H1"]["correct"] == 2
    text = format_per_subject({"model-A": result, "ensemble": result})
    assert "H1" in text and "0.667" in text
    json.dumps(result)


def test_ensemble_report_four_models_and_the_paper_rule():
    rng = np.random.default_rng(4)
    p_all = rng.random((40, 3))
    probs = np.stack([1 - p_all, p_all], axis=-1).astype(np.float32)
    y = rng.integers(0, 2, 40)
    subjects = [str(i // 2 % 4 + 1) if i % 2 else f"H{i % 3 + 8}" for i in range(40)]
    report = ensemble_report(y, probs, subjects)
    assert list(report["models"]) == ["model-A", "model-B", "combined", "ensemble"]
    # The rule: the single most confident probability of the three models decides.
    most_confident = np.abs(p_all - 0.5).argmax(axis=1)
    rule = (p_all[np.arange(40), most_confident] > 0.5).astype(int)
    assert report["models"]["ensemble"] == classification_table(y, rule)
    assert report["models"]["model-B"] == classification_table(y, (p_all[:, 1] > 0.5).astype(int))
    assert list(report["per_subject"]["ensemble"]) == ["1", "2", "3", "4", "H8", "H9", "H10"]
    text = format_report(report)
    assert "weighted avg" in text and "Confusion" in text and "Accuracy per subject" in text
    assert ensemble_report(y, probs)["per_subject"] == {}
    json.dumps(report)
    with pytest.raises(ValueError, match=r"\(N, 3, 2\)"):
        ensemble_report(y, probs[:, :2])
