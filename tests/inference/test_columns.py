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


def test_result_rows_refuse_a_non_finite_probability():
    from pathlib import Path

    import pytest

    from napari_allbag.inference.columns import NonFiniteProbability, result_rows
    from napari_allbag.inference.predict import FilePredictions

    probs = np.full((2, 3, 2), 0.5)
    fine = FilePredictions(Path("f.png"), {}, CellPredictions.from_probs(probs))
    assert len(result_rows(fine)) == 2
    probs[1, 2] = np.nan
    broken = FilePredictions(Path("f.png"), {}, CellPredictions.from_probs(probs))
    with pytest.raises(NonFiniteProbability, match="non-finite probability.*f.png"):
        result_rows(broken)


def test_the_per_image_summary_is_written_beside_the_results(tmp_path):
    import csv
    from pathlib import Path

    from napari_allbag.inference.columns import SUMMARY_COLUMNS, summary_path, write_summary
    from napari_allbag.inference.predict import FileSummary

    path = summary_path(tmp_path / "results.csv")
    assert path == tmp_path / "results.images.csv"
    files = [FileSummary(Path("a.png"), 4, 1, flagged=2), FileSummary(Path("b.png"), error="bad")]
    write_summary(path, files)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert rows[1] == ["a.png", "4", "1", "3", "0.2500", "2", ""]
    assert rows[2] == ["b.png", "0", "0", "0", "", "0", "bad"]
    assert [p.name for p in tmp_path.iterdir()] == ["results.images.csv"]  # nothing temporary
