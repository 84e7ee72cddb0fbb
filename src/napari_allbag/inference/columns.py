"""The columns of a results table (`napari-allbag predict`'s results.csv, the demo's results.csv)
and of the per-image summary beside it (`<out>.images.csv`), written the same way by `predict`
and the Classify widget's folder run; `result_rows` refuses a non-finite probability.

Imports `defaults` only (and `io.atomic` when writing), so the CLI can name the columns before
torch loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.defaults import PREDICTION_COLUMNS

#: Cell-table columns copied into results.csv (before the prediction columns).
CELL_COLUMNS = (
    "cell_id",
    "centroid_row",
    "centroid_col",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "touches_border",
    "mode",
    "keep_reason",
    "nucleus_area_rbc",
)
RESULT_COLUMNS = ("source", *CELL_COLUMNS, *PREDICTION_COLUMNS)
#: The per-image summary's columns (one row per image, unreadable ones with their error).
SUMMARY_COLUMNS = ("source", "cells", "n_all", "n_hem", "all_fraction", "flagged", "error")
#: The probabilities that must be finite before a row is written.
CHECKED_COLUMNS = (*PREDICTION_COLUMNS[:3], "confidence")


class NonFiniteProbability(ValueError):
    """The model gave NaN or infinity for a cell: never written into a results table."""


def check_finite(predictions: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise `NonFiniteProbability` when a probability of `path`'s cells is NaN or infinite
    (damaged weights, or an overflow on this image)."""
    for name in CHECKED_COLUMNS:
        if not np.isfinite(np.asarray(predictions[name], dtype=float)).all():
            raise NonFiniteProbability(
                f"The model gave a non-finite probability ({name}) for a cell of {path}: the "
                "bundle's weights are damaged or overflow on this image, so the run stopped "
                "rather than write it. Check the bundle (train or copy it again)."
            )


def summary_path(out: str | os.PathLike) -> Path:
    """Where the per-image summary goes beside a results CSV: `<out stem>.images.csv`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.images.csv")


def summary_row(item: Any) -> list:
    """One image's summary row (`SUMMARY_COLUMNS`) from an `inference.predict.FileSummary`."""
    fraction = item.all_fraction
    return [
        str(item.path),
        item.cells,
        item.n_all,
        item.n_hem,
        "" if fraction is None else f"{fraction:.4f}",
        item.flagged,
        item.error or item.message or "",
    ]


def write_summary(path: str | os.PathLike, files: list[Any]) -> Path:
    """Write the per-image summary of `files` (`FileSummary`s) to `path` atomically."""
    from napari_allbag.io.atomic import AtomicCsv

    writer = AtomicCsv(Path(path), SUMMARY_COLUMNS)
    try:
        for item in files:
            writer.write_row(summary_row(item))
    except BaseException:
        writer.abandon(keep=False)
        raise
    writer.commit()
    return Path(path)


def csv_value(value):
    """A table value as results.csv writes it: numpy scalars unwrapped, floats to 6 digits,
    NaN (no TTA spread, no nucleus measured) empty."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return value


def result_rows(result) -> list[list]:
    """One file's results.csv rows (`RESULT_COLUMNS`) from an `inference.predict.FilePredictions`
    (none for an unreadable file or one without cells); `NonFiniteProbability` for a NaN."""
    if result.error or not len(result.predictions):
        return []
    table = result.table
    predictions = result.predictions.columns()
    check_finite(predictions, result.path)
    source = str(result.path)
    rows = []
    for row in range(len(result.predictions)):
        values = [source]
        values += [csv_value(table[name][row]) if name in table else "" for name in CELL_COLUMNS]
        values += [csv_value(predictions[name][row]) for name in PREDICTION_COLUMNS]
        rows.append(values)
    return rows
