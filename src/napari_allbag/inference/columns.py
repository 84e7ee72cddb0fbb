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
