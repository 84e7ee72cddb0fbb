"""The evaluation report's figures as PNG bytes: confusion matrix, ROC curve with AUROC,
reliability diagram before/after temperature scaling, per-subject table.

matplotlib's object API (`Figure`, Agg canvas): no pyplot, no global backend, safe in a worker
thread. Files are written through the project's atomic write (`write_figures`).

Imports numpy, matplotlib, scikit-learn and the package's pure modules only.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from napari_allbag.evaluation.per_subject import per_subject_rows
from napari_allbag.io.atomic import write_bytes_atomic
from napari_allbag.model.calibration import ECE_BINS, reliability_bins

CLASS_NAMES = ("hem", "all")
DPI = 110
#: Per-subject rows drawn in the PNG (the HTML and JSON tables hold all of them).
MAX_TABLE_ROWS = 40


@dataclass
class ReportData:
    """What the figures are drawn from: true labels (1 = ALL), the ensemble's P(ALL) before
    calibration, its labels as decided (default P(ALL) >= 0.5), P(ALL) after temperature scaling
    and the cells' subjects, where known."""

    y_true: np.ndarray
    p_all: np.ndarray
    y_pred: np.ndarray | None = None
    p_all_calibrated: np.ndarray | None = None
    subjects: Sequence[str | None] | None = None

    def predictions(self) -> np.ndarray:
        if self.y_pred is not None:
            return np.asarray(self.y_pred, dtype=np.int64)
        return (np.asarray(self.p_all) >= 0.5).astype(np.int64)


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def confusion_png(y_true, y_pred, title: str = "Confusion matrix (ensemble)") -> bytes:
    """Counts and row shares, rows the true class, columns the predicted one."""
    from napari_allbag.evaluation.report import confusion_matrix

    matrix = confusion_matrix(np.asarray(y_true, int), np.asarray(y_pred, int), len(CLASS_NAMES))
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(4.2, 3.6))
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, col] > 0.6 else "black"
        text = f"{count}\n{shares[row, col]:.1%}"
        axes.text(col, row, text, ha="center", va="center", color=colour, fontsize=12)
    labels = [name.upper() for name in CLASS_NAMES]
    axes.set_xticks(range(2), labels)
    axes.set_yticks(range(2), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    return _png(figure)


def roc_png(y_true, p_all) -> tuple[bytes, float | None]:
    """The ROC curve of P(ALL) and its AUROC (None where only one class is present)."""
    from sklearn.metrics import auc, roc_curve

    y_true = np.asarray(y_true, dtype=np.int64)
    figure = Figure(figsize=(4.2, 4.0))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    area = None
    if len(np.unique(y_true)) == 2:
        fpr, tpr, _ = roc_curve(y_true, np.asarray(p_all, dtype=np.float64))
        area = float(auc(fpr, tpr))
        axes.plot(fpr, tpr, color="tab:red", linewidth=2, label=f"ensemble (AUROC {area:.3f})")
    else:
        axes.text(0.5, 0.5, "one class only:\nno ROC curve", ha="center", va="center")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title="ROC curve, P(ALL)")
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (ALL sensitivity)")
    axes.legend(loc="lower right", fontsize=9)
    return _png(figure), area


def _reliability_panel(axes, p_all, y_true, title: str) -> None:
    """Accuracy per confidence bin (bars), mean confidence per bin (markers), cells per bin."""
    bins = reliability_bins(p_all, y_true, ECE_BINS)
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = (bins.edges[1] - bins.edges[0]) * 0.92
    filled = bins.counts > 0
    axes.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1, label="perfect calibration")
    axes.bar(
        centres[filled],
        bins.accuracy[filled],
        width=width,
        color="tab:blue",
        alpha=0.8,
        label="accuracy in the bin",
    )
    axes.plot(
        centres[filled],
        bins.confidence[filled],
        "o",
        color="tab:red",
        markersize=4,
        label="mean confidence in the bin",
    )
    for x, count in zip(centres[filled], bins.counts[filled], strict=True):
        axes.text(x, 0.015, str(count), ha="center", fontsize=6, color="white", rotation=90)
    axes.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="confidence of the predicted class")
    axes.set_title(
        f"{title}\nECE {bins.ece:.3f} ({ECE_BINS} bins; cells per bin at the foot)", fontsize=9
    )


def reliability_png(y_true, p_all, p_all_calibrated=None) -> bytes:
    """Reliability diagram of P(ALL), before and (if given) after temperature scaling."""
    panels = [("before temperature scaling", p_all)]
    if p_all_calibrated is not None:
        panels.append(("after temperature scaling", p_all_calibrated))
    figure = Figure(figsize=(4.0 * len(panels), 4.3))
    for i, (title, values) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), i + 1)
        _reliability_panel(axes, np.asarray(values, dtype=np.float64), y_true, title)
        if i == 0:
            axes.set_ylabel("accuracy")
            axes.legend(loc="upper left", fontsize=8)
    return _png(figure)


def _cell_text(row: dict[str, Any]) -> list[str]:
    sensitivity = row["sensitivity"]
    return [
        str(row["subject"]),
        str(row["label"]).upper(),
        str(row["cells"]),
        f"{row['accuracy']:.3f}",
        "-" if sensitivity is None else f"{sensitivity:.3f}",
    ]


def per_subject_png(rows: list[dict[str, Any]]) -> bytes:
    """The per-subject table (subject, class, cells, accuracy, ALL sensitivity) as an image."""
    shown = rows[:MAX_TABLE_ROWS]
    figure = Figure(figsize=(5.8, 0.25 * (len(shown) + 1)))
    axes = figure.add_subplot()
    axes.axis("off")
    if not shown:
        axes.text(0.5, 0.5, "no subjects known", ha="center", va="center")
        return _png(figure)
    header = ["subject", "class", "cells", "accuracy", "sensitivity"]
    table = axes.table(
        [_cell_text(row) for row in shown], colLabels=header, loc="upper center", cellLoc="center"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, _), cell in table.get_celld().items():
        if row == 0:
            cell.set_facecolor("#dde4ee")
            cell.set_text_props(weight="bold")
    more = f" (first {MAX_TABLE_ROWS} of {len(rows)})" if len(rows) > MAX_TABLE_ROWS else ""
    axes.set_title(f"Per subject{more}", fontsize=10)
    return _png(figure)


def render_figures(data: ReportData) -> tuple[dict[str, bytes], dict[str, Any]]:
    """All figures as {name: PNG bytes}, and the figures' numbers (AUROC, per-subject rows)."""
    y_pred = data.predictions()
    roc, area = roc_png(data.y_true, data.p_all)
    figures = {
        "confusion_matrix": confusion_png(data.y_true, y_pred),
        "roc_curve": roc,
        "reliability": reliability_png(data.y_true, data.p_all, data.p_all_calibrated),
    }
    rows: list[dict[str, Any]] = []
    if data.subjects is not None and any(s is not None for s in data.subjects):
        rows = per_subject_rows(data.y_true, y_pred, data.subjects)
        figures["per_subject"] = per_subject_png(rows)
    return figures, {"auroc": area, "per_subject": rows}


def write_figures(out_dir: str | Path, figures: dict[str, bytes]) -> dict[str, Path]:
    """Write each figure as `<out_dir>/<name>.png`, atomically; returns the paths by name."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.png" for name in figures}
    for name, path in paths.items():
        write_bytes_atomic(path, figures[name])
    return paths
