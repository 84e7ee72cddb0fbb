"""The columns of a results table (`napari-allbag predict`'s results.csv, the demo's results.csv).

Imports `defaults` only, so the CLI can name the columns before torch loads.
"""

from __future__ import annotations

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
)
RESULT_COLUMNS = ("source", *CELL_COLUMNS, *PREDICTION_COLUMNS)


def csv_value(value):
    """A table value as results.csv writes it: numpy scalars unwrapped, floats to 6 digits,
    NaN (no TTA spread) empty."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return value


def result_rows(result) -> list[list]:
    """One file's results.csv rows (`RESULT_COLUMNS`) from an `inference.predict.FilePredictions`
    (none for an unreadable file or one without cells)."""
    if result.error or not len(result.predictions):
        return []
    table = result.table
    predictions = result.predictions.columns()
    source = str(result.path)
    rows = []
    for row in range(len(result.predictions)):
        values = [source]
        values += [csv_value(table[name][row]) if name in table else "" for name in CELL_COLUMNS]
        values += [csv_value(predictions[name][row]) for name in PREDICTION_COLUMNS]
        rows.append(values)
    return rows
