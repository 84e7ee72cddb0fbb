"""segmentation.to_folder: files segmented into crops/, cells.csv and errors.csv."""

from __future__ import annotations

import csv

import cv2
import numpy as np

from napari_allbag.data.synthetic import make_field
from napari_allbag.progress import drive
from napari_allbag.segmentation.dark import SegmentationParams, segment_image
from napari_allbag.segmentation.to_folder import CELLS_COLUMNS, segment_to_folder


def test_segment_to_folder_writes_a_crop_and_a_row_per_cell(tmp_path):
    image = make_field(seed=1, n_cells=3, shape=(256, 256))[0]
    good = tmp_path / "in" / "field.png"
    good.parent.mkdir()
    cv2.imwrite(str(good), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"not an image")
    params = SegmentationParams(crop_size=48)
    out = tmp_path / "out"
    counts = drive(segment_to_folder([good, bad], out, params, workers=1))
    expected = segment_image(image, params)
    tally = counts.pop("feedback")
    assert counts == {"segmented": 1, "failed": 1, "empty": 0, "cells": expected.n_cells}
    assert tally.images == 1 and tally.modes == {"dark background (auto)": 1}
    with open(out / "cells.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == CELLS_COLUMNS and len(rows) == expected.n_cells
    first = cv2.cvtColor(cv2.imread(str(out / rows[0]["crop"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(first, expected.crops[0])
    with open(out / "errors.csv", newline="") as stream:
        errors = list(csv.DictReader(stream))
    assert [row["file"] for row in errors] == [str(bad)]
