"""recrop: crops cut from a label image match the segmentation's own crops."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.data.synthetic import make_field
from napari_allbag.segmentation.dark import SegmentationParams, segment_image
from napari_allbag.segmentation.recrop import crops_from_labels


@pytest.mark.parametrize("crop_size", [48, 96])
def test_crops_from_labels_match_the_segmentation(crop_size):
    image, _ = make_field(seed=2, n_cells=4, shape=(300, 300))
    result = segment_image(image, SegmentationParams(crop_size=crop_size))
    crops = crops_from_labels(image, result.labels, result.table["cell_id"], crop_size)
    assert crops.shape == result.crops.shape
    np.testing.assert_array_equal(crops, result.crops)


def test_missing_cells_give_black_crops_and_bad_inputs_fail():
    image = np.full((20, 20, 3), 200, np.uint8)
    labels = np.zeros((20, 20), np.int32)
    labels[5:10, 5:12] = 2
    crops = crops_from_labels(image, labels, [1, 2], 8)
    assert crops[0].max() == 0 and crops[1].max() == 200
    with pytest.raises(ValueError, match="differ in size"):
        crops_from_labels(image, labels[:10], [2], 8)
