"""The OpenCV segmentation agrees with the plain scikit-image reference."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.io.images import find_images, read_image
from napari_allbag.segmentation.dark import TABLE_COLUMNS, SegmentationParams, segment_image
from tests.drawn_cells import FIELD_CELLS, field
from tests.segmentation.reference import segment_image_reference


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_every_real_cell_mask_agrees_at_iou_99(cnmc_dir):
    params = SegmentationParams()
    worst = 1.0
    paths = find_images([cnmc_dir])
    assert len(paths) == 62
    for path in paths:
        image = read_image(path)
        ours, reference = segment_image(image, params), segment_image_reference(image, params)
        assert ours.n_cells == reference.n_cells == 1, path
        worst = min(worst, iou(ours.labels == 1, reference.labels == 1))
        assert np.abs(ours.crops.astype(int) - reference.crops).mean() < 4, path
    assert worst >= 0.99


@pytest.mark.parametrize("erosion_size", [0, 2, 3, 4])
def test_drawn_field_agrees_cell_by_cell_with_the_same_numbering(erosion_size):
    params = SegmentationParams(crop_size=64, erosion_size=erosion_size, min_area=50)
    image = field()
    ours, reference = segment_image(image, params), segment_image_reference(image, params)
    assert ours.n_cells == reference.n_cells == len(FIELD_CELLS)
    assert tuple(reference.table) == TABLE_COLUMNS
    for cell_id in range(1, ours.n_cells + 1):
        assert iou(ours.labels == cell_id, reference.labels == cell_id) >= 0.97
    np.testing.assert_array_equal(ours.table["area"], reference.table["area"])
    np.testing.assert_array_equal(ours.table["touches_border"], reference.table["touches_border"])
    for name in ("centroid_row", "centroid_col"):
        np.testing.assert_allclose(ours.table[name], reference.table[name], atol=1e-6)
    for name in ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"):
        np.testing.assert_allclose(ours.table[name], reference.table[name], atol=1)


def test_empty_and_largest_only_agree():
    black = np.zeros((30, 30, 3), np.uint8)
    assert segment_image_reference(black).n_cells == segment_image(black).n_cells == 0
    params = SegmentationParams(largest_only=True, crop_size=32)
    ours, reference = segment_image(field(), params), segment_image_reference(field(), params)
    assert ours.n_cells == reference.n_cells == 1
    assert iou(ours.labels == 1, reference.labels == 1) >= 0.97
