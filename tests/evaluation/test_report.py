"""The one Table-1 report: figures against scikit-learn, the side-by-side text, per-subject
accuracy, and the same JSON shape and text for an evaluation and a validation report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report
from sklearn.metrics import confusion_matrix as sk_confusion

from napari_allbag.evaluation.report import (
    REPORT_MODELS,
    build_report,
    classification_table,
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


def _random_cells(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    p_all = rng.random((n, 3))
    probs = np.stack([1 - p_all, p_all], axis=-1).astype(np.float32)
    return rng.integers(0, 2, n), probs, p_all


#: The keys every report has, whatever it is of (docs/report-format.md).
REPORT_KEYS = {
    "kind",
    "version",
    "class_names",
    "n_cells",
    "models",
    "weighted_f1",
    "per_subject",
    "cells",
    "context",
}


def test_build_report_four_models_and_the_paper_rule():
    y, probs, p_all = _random_cells(4)
    subjects = [str(i // 2 % 4 + 1) if i % 2 else f"H{i % 3 + 8}" for i in range(40)]
    report = build_report("evaluation", y, probs, subjects=subjects)
    assert set(report) == REPORT_KEYS and report["kind"] == "evaluation"
    assert list(report["models"]) == list(REPORT_MODELS)
    # The rule: the single most confident probability of the three models decides.
    most_confident = np.abs(p_all - 0.5).argmax(axis=1)
    rule = (p_all[np.arange(40), most_confident] > 0.5).astype(int)
    assert report["models"]["ensemble"] == classification_table(y, rule)
    assert report["models"]["model-B"] == classification_table(y, (p_all[:, 1] > 0.5).astype(int))
    for name, table in report["models"].items():
        assert report["weighted_f1"][name] == table["weighted_avg"]["f1"]
    assert list(report["per_subject"]["ensemble"]) == ["1", "2", "3", "4", "H8", "H9", "H10"]
    assert build_report("evaluation", y, probs)["per_subject"] == {}
    json.dumps(report)
    with pytest.raises(ValueError, match=r"\(N, 3, 2\)"):
        build_report("evaluation", y, probs[:, :2])


def test_one_row_per_cell_with_names_and_the_three_p_all():
    y, probs, p_all = _random_cells(5, n=6)
    files = [f"cell_{i}.bmp" for i in range(6)]
    subjects = ["1", "1", None, "H2", "H2", "H2"]
    report = build_report("validation", y, probs, files=files, subjects=subjects)
    assert len(report["cells"]) == report["n_cells"] == 6
    for i, cell in enumerate(report["cells"]):
        assert cell["file"] == files[i] and cell["subject"] == subjects[i]
        assert cell["label"] == ("hem", "all")[y[i]]
        assert cell["p_all"] == pytest.approx(p_all[i], abs=1e-6)
        assert cell["ensemble"] == ("hem", "all")[int(probs[i].reshape(6).argmax()) % 2]
    assert sum(v["cells"] for v in report["per_subject"]["model-A"].values()) == 5
    # Class names are accepted as labels and give the same report.
    names = build_report("validation", [("hem", "all")[v] for v in y], probs, files, subjects)
    assert names == report


def test_both_kinds_share_one_shape_and_the_context_stays_apart():
    y, probs, _ = _random_cells(6)
    validation = build_report("validation", y, probs, context={"split": "7:3 by subject"})
    evaluation = build_report("evaluation", y, probs, context={"bundle": "b"})
    assert set(validation) == set(evaluation) == REPORT_KEYS
    for key in REPORT_KEYS - {"kind", "context"}:
        assert validation[key] == evaluation[key], key
    assert validation["context"] == {"split": "7:3 by subject"}
    assert evaluation["context"] == {"bundle": "b"}
    with pytest.raises(ValueError, match="unknown report kind"):
        build_report("test", y, probs)
    with pytest.raises(ValueError, match="39 files for 40 cells"):
        build_report("validation", y, probs, files=["f"] * 39)
    with pytest.raises(ValueError, match="labels for"):
        build_report("validation", y[:-1], probs)


def _evaluation_context(skipped: int = 0) -> dict:
    return {
        "bundle": "runs/x/bundle",
        "data_dir": "cells",
        "annotations": {
            "per_class": {"all": 21, "hem": 19},
            "unlabelled": ["a.png"],
            "unreadable": [],
        },
        "skipped": [{"file": f"s{i}.bmp", "reason": "no cell found"} for i in range(skipped)],
        "notes": [{"file": "two.bmp", "note": "2 cells found; kept the largest"}],
    }


def test_format_report_of_a_validation_run():
    y, probs, _ = _random_cells(7)
    subjects = [str(i % 5) for i in range(40)]
    context = {"split": "7:3 by subject", "best_epochs": {"stage1-A": 3}}
    report = build_report("validation", y, probs, subjects=subjects, context=context)
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0] == "Validation report (40 validation cells)"
    assert lines[1] == "split: 7:3 by subject" and lines[2] == "best epochs: {'stage1-A': 3}"
    assert format_table(report["models"]) in text
    assert format_confusion(report["models"]) in text
    assert format_per_subject(report["per_subject"]) in text
    bare = format_report(build_report("validation", y, probs))
    assert bare.splitlines()[:2] == ["Validation report (40 validation cells)", ""]
    assert "Accuracy per subject" not in bare


def test_format_report_of_an_evaluation():
    y, probs, _ = _random_cells(8)
    report = build_report("evaluation", y, probs, context=_evaluation_context(skipped=12))
    lines = format_report(report).splitlines()
    assert lines[0] == "Evaluation of runs/x/bundle on cells"
    assert lines[1] == "  40 cells evaluated (21 ALL and 19 HEM images found)"
    assert lines[2] == "  12 image(s) left out (no crop):"
    assert lines[3] == "    s0.bmp: no cell found" and "(2 more in the JSON report)" in lines[13]
    assert "1 image(s) held more than one cell" in lines[14]
    assert lines[15] == "  1 file(s) without a class were not evaluated"
    assert any(line.startswith("weighted avg") for line in lines)
    assert not any("Segmentation" in line for line in lines)  # nothing was warned about
    warned = _evaluation_context() | {
        "segmentation_warnings": [f"f{i}.png: bright-field (auto): cell 2: ..." for i in range(12)],
        "segmentation_summary": "12 images: bright-field (auto); 12 cells with a small nucleus: "
        "see the warnings above",
    }
    text = format_report(build_report("evaluation", y, probs, context=warned))
    assert "  Segmentation: 12 images: bright-field (auto); 12 cells with a small nucleus\n" in text
    assert "    f9.png: bright-field (auto): cell 2: ..." in text and "f10.png" not in text
    assert "    ... (2 more in the JSON report)" in text
    empty = build_report("evaluation", [], np.zeros((0, 3, 2)), context=_evaluation_context())
    assert empty["n_cells"] == 0 and empty["cells"] == []
    text = format_report(empty)
    assert "0 cells evaluated" in text and "weighted avg" not in text


def test_a_subject_with_cells_of_both_classes_is_called_mixed():
    # issue 13, item 12: subject "7" has 3 HEM cells and 1 ALL cell; it is no HEM subject
    from napari_allbag.evaluation.report import format_per_subject, per_subject_accuracy

    truth = ["hem", "hem", "hem", "all", "all", "all"]
    subjects = ["7", "7", "7", "7", "8", "8"]
    table = per_subject_accuracy(truth, truth, subjects)
    assert table["7"]["label"] == "mixed" and table["8"]["label"] == "all"
    text = format_per_subject({"ensemble": table})
    assert any(line.startswith("7") and "mixed" in line for line in text.splitlines())
    assert not any(line.startswith("7") and "HEM" in line for line in text.splitlines())
