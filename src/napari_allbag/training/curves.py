"""Training log (`log.csv`) and training curves (`curves.png`, like the paper's Fig. 4).

One history row per finished epoch and stage: loss, accuracy, validation loss and accuracy,
learning rate, seconds. The curves draw each stage's loss and accuracy (training and validation)
against the epoch. matplotlib is imported lazily with the Agg canvas and a `Figure` object (no
pyplot state), so drawing is safe from a worker thread: the Train widget has its worker render
the live curves (`render_curves_rgba`), since a redraw costs the GUI thread 0.2-1 s.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_allbag.io.atomic import write_bytes_atomic, write_text_atomic

LOG_COLUMNS = ("stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")
STAGE_TITLES = {"stage1-A": "model-A (set A)", "stage1-B": "model-B (set B)", "stage2": "combined"}


def format_log(rows: Sequence[dict[str, Any]]) -> str:
    """History rows as CSV text with the `LOG_COLUMNS` header."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in LOG_COLUMNS})
    return out.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write `log.csv` atomically."""
    write_text_atomic(Path(path), format_log(rows))


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a `log.csv` (numbers as float, epoch as int); [] when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {"stage": row.get("stage", "")}
            for key in LOG_COLUMNS[1:]:
                text = row.get(key) or ""
                parsed[key] = (int(text) if key == "epoch" else float(text)) if text else None
            rows.append(parsed)
    return rows


def kept_epoch(history: Sequence[dict[str, Any]]) -> int | None:
    """The epoch whose weights a stage keeps: the first with the lowest validation loss (the
    rule of `schedule.PlateauSchedule.step`); None when no epoch has a finite one."""
    best_loss, best = math.inf, None
    for row in history:
        loss = row.get("val_loss")
        if loss is not None and loss < best_loss:  # NaN never compares less: never kept
            best_loss, best = loss, row["epoch"]
    return best


def _mark_kept(axis: Any, history: Sequence[dict[str, Any]], metric: str) -> None:
    """A vertical line and a ring at the kept epoch, so a worse last epoch does not alarm."""
    epoch = kept_epoch(history)
    if epoch is None:
        return
    value = next(row[f"val_{metric}"] for row in history if row["epoch"] == epoch)
    axis.axvline(epoch, color="tab:green", lw=1, alpha=0.6)
    if value is not None:
        axis.plot([epoch], [value], "o", ms=9, mfc="none", mec="tab:green", label="kept epoch")


def draw_curves(figure: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Draw loss and accuracy curves per stage onto a matplotlib `Figure` (cleared first)."""
    figure.clear()
    stages = [s for s in dict.fromkeys(row["stage"] for row in rows)]
    if not stages:
        axis = figure.add_subplot(1, 1, 1)
        axis.text(0.5, 0.5, "no finished epoch yet", ha="center", va="center")
        axis.set_axis_off()
        return
    for row_index, stage in enumerate(stages):
        history = [row for row in rows if row["stage"] == stage]
        epochs = [row["epoch"] for row in history]
        for col, (metric, label) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
            axis = figure.add_subplot(len(stages), 2, row_index * 2 + col + 1)
            axis.plot(epochs, [row[metric] for row in history], "o-", ms=3, label="training")
            axis.plot(
                epochs, [row[f"val_{metric}"] for row in history], "s--", ms=3, label="validation"
            )
            _mark_kept(axis, history, metric)
            kept = kept_epoch(history)
            title = f"{STAGE_TITLES.get(stage, stage)}: {label}"
            # the kept epoch on its own line: two titles side by side overlap in a narrow dock
            axis.set_title(title + (f"\n(kept: epoch {kept})" if kept else ""), fontsize=9)
            axis.set_xlabel("epoch", fontsize=8)
            axis.tick_params(labelsize=7)
            axis.grid(alpha=0.3)
            if row_index == 0 and col == 0:
                axis.legend(fontsize=7)
    figure.tight_layout()


def save_curves(main: bool, path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write `curves.png` of `rows` from the main process, once there is a finished epoch."""
    if main and rows:
        render_curves_png(rows, path)


def render_curves_png(
    rows: Sequence[dict[str, Any]], path: Path | None = None, dpi: int = 100
) -> bytes:
    """The curves as PNG bytes; also written atomically to `path` when given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_stages = max(1, len({row["stage"] for row in rows}))
    figure = Figure(figsize=(8, 2.6 * n_stages), dpi=dpi)
    FigureCanvasAgg(figure)
    draw_curves(figure, rows)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        write_bytes_atomic(Path(path), data)
    return data


def render_curves_rgba(rows: Sequence[dict[str, Any]], width: int, height: int, dpi: float = 80):
    """The curves as a `height` x `width` x 4 uint8 RGBA array (for a GUI to show)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(1, width) / dpi, max(1, height) / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    draw_curves(figure, rows)
    canvas.draw()
    return np.array(canvas.buffer_rgba(), dtype=np.uint8)
