"""The paper's Table 1 as one report, for `evaluate` and for the validation after training.

`build_report` makes it, `format_report` writes it as text; both callers get the same JSON shape
(docs/report-format.md): precision, recall, F1 and support per class with the support-weighted
average, accuracy and the confusion matrix for model-A, model-B, the combined model and the
ensemble rule; accuracy per subject; one row per cell; and a `context` saying where it came from.

Everything returned is plain JSON-able Python (floats, ints, lists, dicts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_allbag.data.annotations import CLASS_NAMES, class_indices, subject_sort_key

METRIC_KEYS = ("precision", "recall", "f1", "support")


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
    true = class_indices(y_true, class_names)
    pred = class_indices(y_pred, class_names)
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
    true = class_indices(y_true, class_names)
    pred = class_indices(y_pred, class_names)
    result: dict[str, dict[str, Any]] = {}
    for subject in sorted({s for s in subjects if s is not None}, key=subject_sort_key):
        rows = np.array([s == subject for s in subjects])
        counts = np.bincount(true[rows], minlength=len(class_names))
        correct = int((true[rows] == pred[rows]).sum())
        result[subject] = {
            "cells": int(rows.sum()),
            "correct": correct,
            "accuracy": _ratio(correct, rows.sum()),
            "label": _subject_label(counts, class_names),
        }
    return result


def _subject_label(counts: np.ndarray, class_names: Sequence[str]) -> str:
    """The subject's true class, or "mixed" when its cells are of both classes (a subject is
    one patient: a mixed one is a labelling doubt, never to be called HEM or ALL)."""
    present = np.flatnonzero(counts)
    return class_names[int(present[0])] if len(present) == 1 else "mixed"


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
#: What a report is of: `evaluate` on an annotated folder, or the validation split after training.
REPORT_KINDS = ("evaluation", "validation")
#: Bumped when a key changes meaning or goes away (docs/report-format.md).
REPORT_VERSION = 1


def model_predictions(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Class indices per cell from ensemble probabilities (N, 3, 2) for each of `REPORT_MODELS`:
    argmax of model-A, model-B and the combined model, and the paper's ensemble rule."""
    from napari_allbag.model.networks import (
        decide,  # torch: imported only where probabilities exist
    )

    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[1:] != (3, 2):
        raise ValueError(f"expected probabilities of shape (N, 3, 2), got {probs.shape}")
    predictions = {name: probs[:, i].argmax(axis=1) for i, name in enumerate(REPORT_MODELS[:3])}
    predictions["ensemble"] = np.asarray(decide(probs)[0], dtype=np.int64)
    return predictions


def _cell_rows(
    labels: np.ndarray,
    probs: np.ndarray,
    ensemble: np.ndarray,
    files: Sequence[Any] | None,
    subjects: Sequence[str | None] | None,
) -> list[dict[str, Any]]:
    """One JSON row per cell: file, true class, subject, the three P(ALL), the ensemble's class."""
    n = len(labels)
    files = [None] * n if files is None else [str(f) for f in files]
    subjects = [None] * n if subjects is None else list(subjects)
    for name, values in (("files", files), ("subjects", subjects)):
        if len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} cells")
    return [
        {
            "file": files[i],
            "label": CLASS_NAMES[int(labels[i])],
            "subject": subjects[i],
            "p_all": [round(float(p), 6) for p in probs[i, :, 1]],
            "ensemble": CLASS_NAMES[int(ensemble[i])],
        }
        for i in range(n)
    ]


def build_report(
    kind: str,
    labels: Sequence[Any] | np.ndarray,
    probs: np.ndarray,
    files: Sequence[Any] | None = None,
    subjects: Sequence[str | None] | None = None,
    context: dict[str, Any] | None = None,
    ensemble: Sequence[int] | np.ndarray | None = None,
) -> dict[str, Any]:
    """The report of `kind` ("evaluation" or "validation") on cells with true `labels` (class
    indices or names) and ensemble probabilities `probs` (N, 3, 2): a JSON-able dict of the shape
    in docs/report-format.md. `context` (JSON-able) says where the figures come from; `ensemble`
    (class indices) replaces the paper's rule as the ensemble's labels."""
    if kind not in REPORT_KINDS:
        raise ValueError(f"unknown report kind {kind!r}; expected one of {REPORT_KINDS}")
    labels = class_indices(labels, CLASS_NAMES)
    predictions = model_predictions(probs)
    if ensemble is not None:  # another rule or the threshold decided (inference.decision)
        predictions["ensemble"] = np.asarray(ensemble, dtype=np.int64).reshape(-1)
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels for {len(probs)} cells")
    tables = {name: classification_table(labels, pred) for name, pred in predictions.items()}
    per_subject: dict[str, Any] = {}
    if subjects is not None and any(s is not None for s in subjects):
        per_subject = {
            name: per_subject_accuracy(labels, pred, list(subjects))
            for name, pred in predictions.items()
        }
    return {
        "kind": kind,
        "version": REPORT_VERSION,
        "class_names": list(CLASS_NAMES),
        "n_cells": int(len(labels)),
        "models": tables,
        "weighted_f1": {name: table["weighted_avg"]["f1"] for name, table in tables.items()},
        "per_subject": per_subject,
        "cells": _cell_rows(labels, np.asarray(probs), predictions["ensemble"], files, subjects),
        "context": dict(context or {}),
    }


def _validation_header(report: dict[str, Any]) -> list[str]:
    context = report["context"]
    lines = [f"Validation report ({report['n_cells']} validation cells)"]
    for key in ("split", "best_epochs"):
        if key in context:
            lines.append(f"{key.replace('_', ' ')}: {context[key]}")
    return lines


def _evaluation_header(report: dict[str, Any]) -> list[str]:
    context = report["context"]
    annotations = context["annotations"]
    lines = [
        f"Evaluation of {context['bundle']} on {context['data_dir']}",
        f"  {report['n_cells']} cells evaluated ({annotations['per_class']['all']} ALL and "
        f"{annotations['per_class']['hem']} HEM images found)",
    ]
    skipped = context["skipped"]
    if skipped:
        lines.append(f"  {len(skipped)} image(s) left out (no crop):")
        lines += [f"    {entry['file']}: {entry['reason']}" for entry in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"    ... ({len(skipped) - 10} more in the JSON report)")
    if context["notes"]:
        lines.append(
            f"  {len(context['notes'])} image(s) held more than one cell: the largest was used"
        )
    for key, title in (("unlabelled", "without a class"), ("unreadable", "unreadable")):
        if annotations[key]:
            lines.append(f"  {len(annotations[key])} file(s) {title} were not evaluated")
    return lines + _segmentation_lines(context) + _doubtful_data(annotations)


def segmentation_summary(context: dict[str, Any]) -> str:
    """The console's segmentation summary line without its pointer to the console's warnings
    (a report lists them itself)."""
    return str(context.get("segmentation_summary", "")).removesuffix(": see the warnings above")


def _segmentation_lines(context: dict[str, Any]) -> list[str]:
    """What the segmentation warned about (mode guessed, no cell, doubtful, small nuclei), as
    the console said it, so that the report read later says it too."""
    warnings = context.get("segmentation_warnings") or []
    if not warnings:
        return []
    lines = [f"  Segmentation: {segmentation_summary(context)}"]
    lines += [f"    {warning}" for warning in warnings[:10]]
    if len(warnings) > 10:
        lines.append(f"    ... ({len(warnings) - 10} more in the JSON report)")
    return lines


def _doubtful_data(annotations: dict[str, Any]) -> list[str]:
    """Warnings about data whose scores would mislead: one class only, contradicting names."""
    lines = []
    missing = [name for name, count in annotations["per_class"].items() if count == 0]
    if len(missing) == 1:
        present = "ALL" if missing[0] == "hem" else "HEM"
        lines.append(
            f"  WARNING: no {missing[0].upper()} image in this folder, only {present}: the "
            f"{missing[0].upper()} row has support 0 and its scores are 0 by construction. "
            "Evaluate on a folder holding both classes for a meaningful Table 1."
        )
    conflicting = annotations.get("conflicting_labels") or []
    if conflicting:
        lines.append(
            f"  WARNING: {len(conflicting)} file(s) are named for one class but lie in the other "
            "class's folder (the folder's class was used); check and move or rename them:"
        )
        lines += [f"    {name}" for name in conflicting[:10]]
        if len(conflicting) > 10:
            lines.append(f"    ... ({len(conflicting) - 10} more in the JSON report)")
    return lines


_HEADERS = {"evaluation": _evaluation_header, "validation": _validation_header}


def format_report(report: dict[str, Any], max_subjects: int = 200) -> str:
    """The report as text (the terminal and report.txt): what it is of, then Table 1 side by
    side, the confusion matrices and the accuracy per subject."""
    lines = _HEADERS[report["kind"]](report)
    if report["n_cells"]:
        models = report["models"]
        parts = [format_table(models), format_confusion(models)]
        if report["per_subject"]:
            parts.append(format_per_subject(report["per_subject"], max_rows=max_subjects))
        lines += ["", "\n\n".join(part for part in parts if part)]
    return "\n".join(lines)
