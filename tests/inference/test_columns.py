"""inference.columns: results.csv's columns are the cell table's and the predictions' own."""

from __future__ import annotations

import numpy as np

from napari_allbag.defaults import PREDICTION_COLUMNS
from napari_allbag.inference.classify import CellPredictions
from napari_allbag.inference.columns import CELL_COLUMNS, RESULT_COLUMNS
from napari_allbag.segmentation.dark import SegmentationParams, segment_image
from tests.drawn_cells import field


def test_cell_columns_come_from_the_segmentation_table():
    image = field()
    table = segment_image(image, SegmentationParams(crop_size=64), source="f.png").table
    assert set(CELL_COLUMNS) <= set(table)
    assert len(set(RESULT_COLUMNS)) == len(RESULT_COLUMNS)  # no name twice
    assert RESULT_COLUMNS == ("source", *CELL_COLUMNS, *PREDICTION_COLUMNS)


def test_prediction_columns_are_what_the_ensemble_gives():
    rng = np.random.default_rng(0)
    p_all = rng.random((5, 3))
    predictions = CellPredictions.from_probs(np.stack([1 - p_all, p_all], axis=-1))
    columns = predictions.columns()
    assert tuple(columns) == PREDICTION_COLUMNS
    assert all(len(values) == 5 for values in columns.values())
    np.testing.assert_allclose(columns["p_all_combined"], p_all[:, 2], rtol=1e-6)
