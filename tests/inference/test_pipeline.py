"""inference.pipeline: the one load -> segment -> classify chain every front end calls."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from napari_allbag.data.synthetic import make_field
from napari_allbag.inference.pipeline import (
    PipelineOptions,
    cell_ids,
    classify_cells,
    classify_files_cached,
    classify_image,
    classify_labels,
    segmentation_params,
)
from napari_allbag.model.bundle import load_bundle
from napari_allbag.progress import Progress, drive
from napari_allbag.segmentation.dark import SegmentationParams, segment_image
from tests.model_factory import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("b") / "tiny", seed=3), "cpu")


@pytest.fixture(scope="module")
def image():
    return make_field(seed=5, n_cells=4, shape=(320, 320))[0]


def _direct(bundle, crops):
    with torch.no_grad():
        return bundle.ensemble(torch.from_numpy(np.ascontiguousarray(crops))).numpy()


def test_classify_image_segments_with_the_bundles_params_and_classifies(bundle, image):
    events = []
    found = drive(classify_image(bundle, image, PipelineOptions(batch_size=3)), events.append)
    expected = segment_image(image, segmentation_params(bundle))
    assert found.segmentation.n_cells == expected.n_cells == len(found.predictions) > 0
    np.testing.assert_array_equal(found.labels, expected.labels)
    np.testing.assert_array_equal(found.crops, expected.crops)
    assert np.allclose(found.predictions.probs, _direct(bundle, expected.crops), atol=1e-5)
    stages = {event.stage for event in events if isinstance(event, Progress)}
    assert {"segmenting", "classify"} <= stages


def test_options_replace_the_bundles_segmentation(bundle, image):
    strict = SegmentationParams(crop_size=bundle.crop_size, min_area=10**8)
    found = drive(classify_image(bundle, image, PipelineOptions(segmentation=strict)))
    assert len(found.predictions) == 0 and found.message
    as_dict = PipelineOptions(segmentation=strict.to_dict())
    assert segmentation_params(bundle, as_dict) == strict
    assert segmentation_params(bundle) == bundle.segmentation
    with pytest.raises(dataclasses.FrozenInstanceError):
        PipelineOptions().batch_size = 4


def test_classify_labels_cuts_the_crops_again_or_takes_those_given(bundle, image):
    segmented = segment_image(image, segmentation_params(bundle))
    recut = drive(classify_labels(bundle, image, segmented.labels))
    np.testing.assert_array_equal(recut.table["cell_id"], segmented.table["cell_id"])
    np.testing.assert_array_equal(recut.crops, segmented.crops)
    assert np.allclose(recut.predictions.probs, _direct(bundle, segmented.crops), atol=1e-5)
    given = np.ascontiguousarray(segmented.crops[::-1])
    table = {"cell_id": segmented.table["cell_id"]}
    taken = drive(classify_labels(bundle, None, segmented.labels, table, given))
    assert taken.crops is given
    assert np.allclose(taken.predictions.probs, _direct(bundle, given), atol=1e-5)
    with pytest.raises(ValueError, match="image"):
        drive(classify_labels(bundle, None, segmented.labels))


def test_cell_ids_prefer_index_then_cell_id_then_labels():
    labels = np.array([[0, 4], [7, 7]])
    assert cell_ids({}, labels).tolist() == [4, 7]
    assert cell_ids({"cell_id": [2, 3]}, labels).tolist() == [2, 3]
    assert cell_ids({"index": [9], "cell_id": [2]}, labels).tolist() == [9]


def test_classify_cells_uses_the_options_batch_size(bundle):
    crops = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    events = []
    predictions = drive(classify_cells(bundle, crops, PipelineOptions(batch_size=2)), events.append)
    assert [e.done for e in events if e.done] == [2, 4, 5]
    assert np.allclose(predictions.probs, _direct(bundle, crops), atol=1e-5)


def test_classify_files_cached_gives_one_row_per_file(bundle, tmp_path):
    paths = []
    for seed in range(2):
        cell = make_field(seed=seed, n_cells=1, shape=(160, 160))[0]
        paths.append(tmp_path / f"cell{seed}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(cell, cv2.COLOR_RGB2BGR))
    paths.append(tmp_path / "black.png")
    cv2.imwrite(str(paths[-1]), np.zeros((64, 64, 3), np.uint8))
    options = PipelineOptions(workers=1)
    found = drive(classify_files_cached(bundle, paths, options, tmp_path / "cache"))
    assert found.rows.tolist() == [0, 1]
    assert found.params == segmentation_params(bundle)
    assert len(found.predictions) == len(paths)
    crops = np.asarray(found.cache.crops)[found.rows]
    expected = _direct(bundle, crops)
    assert np.allclose(found.predictions.probs[found.rows], expected, atol=1e-5)


def test_a_bright_field_cell_with_a_small_nucleus_is_flagged_for_review(bundle):
    from tests.segmentation.test_brightfield import draw_white_cell, smear

    image, _ = smear(seed=6, keep_clear=[(150, 150, 30), (150, 330, 30)])
    draw_white_cell(image, 150, 150, lobes=((0, 0, 16),))  # a nucleus larger than a red cell
    draw_white_cell(image, 150, 330, lobes=((0, 0, 10),))  # half a red cell
    params = SegmentationParams(crop_size=bundle.crop_size, background="bright")
    found = drive(classify_image(bundle, image, PipelineOptions(segmentation=params)))
    order = np.argsort(found.segmentation.table["centroid_col"])
    reasons = found.predictions.review_reason[order]
    assert "small nucleus" not in reasons[0] and reasons[1].endswith("small nucleus"), reasons
    assert found.predictions.review[order][1]
