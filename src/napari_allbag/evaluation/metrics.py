"""The paper's Table 1: precision, recall, F1 and support per class plus the support-weighted
average, with accuracy and the confusion matrix, for several models side by side.

Everything returned is plain JSON-able Python (floats, ints, lists, dicts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_allbag.data.annotations import CLASS_NAMES, subject_sort_key

METRIC_KEYS = ("precision", "recall", "f1", "support")


def _as_indices(values: Sequence[Any] | np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind in "UO":
        lookup = {name.lower(): i for i, name in enumerate(class_names)}
        try:
            return np.array([lookup[str(v).lower()] for v in array], dtype=np.int64)
        except KeyError as error:
            raise ValueError(
                f"Unknown class {error.args[0]!r}; expected one of {tuple(class_names)}"
            ) from None
    array = array.astype(np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= len(class_names)):
        raise ValueError(f"Class indices must be in 0..{len(class_names) - 1}.")
    return array


def confusion_matrix(y_true, y_pred, n_classes: int = 2) -> np.ndarray:
    """Counts: rows are the true class, columns the predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def classification_table(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any]:
    """Table 1 for one model: per class precision, recall, F1 and support; the support-weighted
    average; accuracy; the confusion matrix (rows true, columns predicted).

    Labels are class indices (0 HEM, 1 ALL) or class names. A ratio with a zero denominator is 0,
    as in scikit-learn.
    """
    true = _as_indices(y_true, class_names)
    pred = _as_indices(y_pred, class_names)
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length ({len(true)} vs {len(pred)}).")
    matrix = confusion_matrix(true, pred, len(class_names))
    per_class: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(class_names):
        tp = matrix[i, i]
        precision = _ratio(tp, matrix[:, i].sum())
        recall = _ratio(tp, matrix[i, :].sum())
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(matrix[i, :].sum()),
        }
    total = int(len(true))
    weighted = {
        key: _ratio(sum(row[key] * row["support"] for row in per_class.values()), total)
        for key in ("precision", "recall", "f1")
    }
    weighted["support"] = total
    return {
        "class_names": list(class_names),
        "per_class": per_class,
        "weighted_avg": weighted,
        "accuracy": _ratio(np.trace(matrix), total),
        "confusion_matrix": matrix.tolist(),
        "n_cells": total,
    }


def per_subject_accuracy(
    y_true: Sequence[Any] | np.ndarray,
    y_pred: Sequence[Any] | np.ndarray,
    subjects: Sequence[str | None],
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, dict[str, Any]]:
    """Per subject: cells, correct predictions, accuracy and the subject's (majority) true class.
    Cells without a subject id are left out."""
    true = _as_indices(y_true, class_names)
    pred = _as_indices(y_pred, class_names)
    result: dict[str, dict[str, Any]] = {}
    for subject in sorted({s for s in subjects if s is not None}, key=subject_sort_key):
        rows = np.array([s == subject for s in subjects])
        counts = np.bincount(true[rows], minlength=len(class_names))
        correct = int((true[rows] == pred[rows]).sum())
        result[subject] = {
            "cells": int(rows.sum()),
            "correct": correct,
            "accuracy": _ratio(correct, rows.sum()),
            "label": class_names[int(np.argmax(counts))],
        }
    return result


def _row_label(name: str) -> str:
    return name.upper() if len(name) <= 4 else name


def format_table(tables: dict[str, dict[str, Any]], decimals: int = 2) -> str:
    """Table 1 for several models side by side (e.g. model-A, model-B, combined, ensemble).

    All tables must be on the same cells (same support); the support column is shown once.
    """
    if not tables:
        return "(no results)"
    names = list(tables)
    first = tables[names[0]]
    class_names = first["class_names"]
    for name in names[1:]:
        if tables[name]["weighted_avg"]["support"] != first["weighted_avg"]["support"] or [
            tables[name]["per_class"][c]["support"] for c in class_names
        ] != [first["per_class"][c]["support"] for c in class_names]:
            raise ValueError(f"Tables {names[0]!r} and {name!r} are not on the same cells.")
    width = decimals + 4
    block = 3 * width + 2
    label_width = 13
    header1 = " " * label_width + "".join(f" | {n:^{block - 1}}" for n in names) + " | support"
    sub = f"{'precision':>{width}} {'recall':>{width}} {'f1':>{width}}"
    sub = f"{'prec':>{width}} {'recall':>{width}} {'f1':>{width}}" if width < 9 else sub
    header2 = f"{'class':<{label_width}}" + "".join(f" | {sub:<{block - 1}}" for _ in names) + " |"
    lines = [header1, header2, "-" * len(header1)]

    def row(label: str, pick) -> str:
        cells = []
        for name in names:
            metrics = pick(tables[name])
            cells.append(
                " ".join(
                    f"{metrics[k]:>{width}.{decimals}f}" for k in ("precision", "recall", "f1")
                )
            )
        support = pick(first)["support"]
        return (
            f"{label:<{label_width}}"
            + "".join(f" | {c:<{block - 1}}" for c in cells)
            + f" | {support:>7d}"
        )

    for class_name in class_names:
        lines.append(row(_row_label(class_name), lambda t, c=class_name: t["per_class"][c]))
    lines.append(row("weighted avg", lambda t: t["weighted_avg"]))
    accuracy = "".join(f" | {tables[n]['accuracy']:^{block - 1}.{decimals}f}" for n in names)
    lines.append(f"{'accuracy':<{label_width}}" + accuracy + " |")
    return "\n".join(lines)


def format_confusion(tables: dict[str, dict[str, Any]]) -> str:
    """The confusion matrices side by side (rows: true class, columns: predicted class)."""
    if not tables:
        return ""
    names = list(tables)
    class_names = tables[names[0]]["class_names"]
    width = max(7, *(len(n) for n in names))
    cell = max(6, width // len(class_names))
    block = cell * len(class_names)
    lines = ["Confusion matrices (rows: true class, columns: predicted class)"]
    lines.append(f"{'':<6}" + "".join(f" | {n:^{block}}" for n in names))
    heads = "".join(f"{_row_label(c):>{cell}}" for c in class_names)
    lines.append(f"{'true':<6}" + "".join(f" | {heads:^{block}}" for _ in names))
    for i, class_name in enumerate(class_names):
        parts = []
        for name in names:
            counts = tables[name]["confusion_matrix"][i]
            parts.append("".join(f"{v:>{cell}d}" for v in counts))
        lines.append(f"{_row_label(class_name):<6}" + "".join(f" | {p:^{block}}" for p in parts))
    return "\n".join(lines)


def format_per_subject(
    per_subject: dict[str, dict[str, dict[str, Any]]], max_rows: int = 200
) -> str:
    """Accuracy per subject for several models: {model: per_subject_accuracy(...)}."""
    if not per_subject:
        return ""
    names = list(per_subject)
    subjects = list(per_subject[names[0]])
    if not subjects:
        return ""
    width = max(9, *(len(n) + 1 for n in names))
    lines = [
        "Accuracy per subject",
        f"{'subject':<10}{'class':<6}{'cells':>6}" + "".join(f"{n:>{width}}" for n in names),
    ]
    for subject in subjects[:max_rows]:
        info = per_subject[names[0]][subject]
        accs = "".join(f"{per_subject[n][subject]['accuracy']:>{width}.3f}" for n in names)
        lines.append(f"{subject:<10}{_row_label(info['label']):<6}{info['cells']:>6d}" + accs)
    if len(subjects) > max_rows:
        lines.append(f"... ({len(subjects) - max_rows} more subjects in the JSON report)")
    return "\n".join(lines)


#: The four predictions compared in Table 1: each stage-1 model, the combined model, the rule.
REPORT_MODELS = ("model-A", "model-B", "combined", "ensemble")


def model_predictions(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Class indices per cell from ensemble probabilities (N, 3, 2) for each of `REPORT_MODELS`:
    argmax of model-A, model-B and the combined model, and the paper's ensemble rule."""
    from napari_allbag.model.networks import (
        decide,  # torch: imported only where probabilities exist
    )

    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[1:] != (3, 2):
        raise ValueError(f"expected probabilities of shape (N, 3, 2), got {probs.shape}")
    predictions = {name: probs[:, i].argmax(axis=1) for i, name in enumerate(REPORT_MODELS[:3])}
    predictions["ensemble"] = np.asarray(decide(probs)[0], dtype=np.int64)
    return predictions


def ensemble_report(
    y_true: Sequence[Any] | np.ndarray,
    probs: np.ndarray,
    subjects: Sequence[str | None] | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict[str, Any]:
    """Table 1 for model-A, model-B, combined and the ensemble rule, plus accuracy per subject
    where subjects are known: a JSON-able dict for `format_report`."""
    predictions = model_predictions(probs)
    tables = {
        name: classification_table(y_true, pred, class_names) for name, pred in predictions.items()
    }
    per_subject: dict[str, Any] = {}
    if subjects is not None and any(s is not None for s in subjects):
        per_subject = {
            name: per_subject_accuracy(y_true, pred, subjects, class_names)
            for name, pred in predictions.items()
        }
    return {"models": tables, "per_subject": per_subject, "n_cells": int(len(probs))}


def format_report(report: dict[str, Any], max_subjects: int = 200) -> str:
    """Text for `ensemble_report`: Table 1 side by side, confusion matrices, per-subject accuracy."""
    parts = [format_table(report["models"]), format_confusion(report["models"])]
    if report.get("per_subject"):
        parts.append(format_per_subject(report["per_subject"], max_rows=max_subjects))
    return "\n\n".join(part for part in parts if part)
