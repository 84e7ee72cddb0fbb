"""The validation report of a training run: the paper's Table 1 for model-A, model-B, the combined
model and the ensemble rule, with confusion matrices and per-subject accuracy, as text and JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_allbag.evaluation.metrics import (
    classification_table,
    format_confusion,
    format_per_subject,
    format_table,
    per_subject_accuracy,
)
from napari_allbag.model.networks import decide

REPORT_MODELS = ("model-A", "model-B", "combined", "ensemble")


def predictions_from_probs(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted class per cell for each model and for the ensemble rule, from (N, 3, 2) probs."""
    probs = np.asarray(probs, dtype=np.float64)
    ensemble, _ = decide(probs)
    return {
        "model-A": probs[:, 0].argmax(axis=1),
        "model-B": probs[:, 1].argmax(axis=1),
        "combined": probs[:, 2].argmax(axis=1),
        "ensemble": np.asarray(ensemble),
    }


def build_report(
    labels: np.ndarray,
    probs: np.ndarray,
    subjects: Sequence[str | None] | None = None,
    files: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-able dict (tables, per-subject accuracy, per-cell predictions)."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = predictions_from_probs(probs)
    tables = {name: classification_table(labels, predictions[name]) for name in REPORT_MODELS}
    report: dict[str, Any] = {
        "cells": int(len(labels)),
        "tables": tables,
        "weighted_f1": {name: tables[name]["weighted_avg"]["f1"] for name in REPORT_MODELS},
    }
    if subjects is not None and any(s is not None for s in subjects):
        report["per_subject"] = {
            name: per_subject_accuracy(labels, predictions[name], list(subjects))
            for name in REPORT_MODELS
        }
    if files is not None:
        probs = np.asarray(probs, dtype=np.float64)
        report["cells_detail"] = [
            {
                "file": str(file),
                "label": int(label),
                "p_all": [round(float(p), 6) for p in probs[i, :, 1]],
                "ensemble": int(predictions["ensemble"][i]),
            }
            for i, (file, label) in enumerate(zip(files, labels, strict=True))
        ]
    if extra:
        report.update(extra)
    return report


def format_report(report: dict[str, Any], title: str = "Validation report") -> str:
    """The report as text: Table 1 side by side, confusion matrices, per-subject accuracy."""
    lines = [f"{title} ({report['cells']} validation cells)"]
    for key in ("split", "best_epochs"):
        if key in report:
            lines.append(f"{key.replace('_', ' ')}: {report[key]}")
    lines += ["", format_table(report["tables"]), "", format_confusion(report["tables"])]
    if report.get("per_subject"):
        lines += ["", format_per_subject(report["per_subject"])]
    return "\n".join(lines) + "\n"
