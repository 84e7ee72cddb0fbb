"""The OpenCV segmentation: real C-NMC cells, drawn fields, every awkward input, file streaming."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.io.images import find_images, read_image
from napari_allbag.progress import Progress
from napari_allbag.segmentation.dark import (
    FILES_PER_TASK,
    TABLE_COLUMNS,
    FileSegmentation,
    SegmentationParams,
    iter_segment_files,
    segment_file,
    segment_image,
    segment_image_progress,
)
from tests.drawn_cells import FIELD_CELLS, FIELD_SHAPE, DrawnCell, draw_cells, field, single_cell


def non_black_box(crop: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(crop.any(axis=2))
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


def check_table(result, n: int) -> None:
    assert tuple(result.table) == TABLE_COLUMNS
    assert all(len(values) == n for values in result.table.values())
    assert result.crops.shape[0] == n and result.crops.dtype == np.uint8
    np.testing.assert_array_equal(result.table["cell_id"], np.arange(1, n + 1))


# --- parameters -----------------------------------------------------------------------------


def test_params_round_trip_through_json_and_reject_bad_values():
    params = SegmentationParams(crop_size=128, erosion_size=5, min_area=50, largest_only=True)
    assert SegmentationParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    assert SegmentationParams.from_dict({}) == SegmentationParams()
    with pytest.raises(ValueError, match="unknown segmentation parameter"):
        SegmentationParams.from_dict({"crop_size": 64, "sharpen": True})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.crop_size = 3
    for bad in ({"crop_size": 0}, {"erosion_size": -1}, {"min_area": -5}, {"crop_size": 2.5}):
        with pytest.raises(ValueError):
            SegmentationParams(**bad)


# --- real and drawn cells -------------------------------------------------------------------


def test_each_real_cnmc_image_gives_one_centred_unstretched_cell(cnmc_dir):
    params = SegmentationParams()
    for path in find_images([cnmc_dir]):
        image = read_image(path)
        result = segment_file(path, params)
        check_table(result, 1)
        assert result.message == ""
        assert result.table["source"][0] == str(path)
        assert result.crops.shape == (1, 299, 299, 3)
        assert result.labels.shape == image.shape[:2] and result.labels.dtype == np.int32
        assert set(np.unique(result.labels)) == {0, 1}
        assert result.table["hull_area"][0] == np.count_nonzero(result.labels)
        assert not result.table["touches_border"][0]
        # the crop is filled along its longer side and centred along the shorter one
        top, left, bottom, right = non_black_box(result.crops[0])
        box = [result.table[f"bbox_{k}"][0] for k in ("min_row", "min_col", "max_row", "max_col")]
        aspect = (box[2] - box[0]) / (box[3] - box[1])
        assert (bottom - top) / (right - left) == pytest.approx(aspect, rel=0.05)
        assert abs((top + bottom) / 2 - 149.5) <= 2 and abs((left + right) / 2 - 149.5) <= 2
        assert max(bottom - top, right - left) >= 297


def test_pixels_outside_the_hull_are_black_in_the_crop():
    image = single_cell(size=200)
    image[5:15, 5:15] = 200  # a bright square far from the cell, inside the cell's square
    params = SegmentationParams(crop_size=200, erosion_size=1, min_area=500)
    result = segment_image(image, params)
    assert result.n_cells == 1
    top, left = result.table["bbox_min_row"][0], result.table["bbox_min_col"][0]
    outside = result.labels == 0
    region = image.copy()
    region[outside] = 0
    # crop_size equal to the square side: no resize, so compare pixel for pixel
    bottom, right = result.table["bbox_max_row"][0], result.table["bbox_max_col"][0]
    side = max(bottom - top, right - left)
    assert side < 200
    crop = segment_image(image, dataclasses.replace(params, crop_size=int(side))).crops[0]
    row0, col0 = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    np.testing.assert_array_equal(
        crop[row0 : row0 + bottom - top, col0 : col0 + right - left], region[top:bottom, left:right]
    )


def test_field_gives_one_cell_per_component_in_raster_order_with_border_flag():
    result = segment_image(field(), SegmentationParams(crop_size=64), source="field")
    check_table(result, len(FIELD_CELLS))
    drawn = sorted(FIELD_CELLS, key=lambda c: (c.center[0] - c.axes[0], c.center[1]))
    for row, cell in enumerate(drawn):
        assert result.table["centroid_row"][row] == pytest.approx(cell.center[0], abs=3)
        inside_image = cell.center[1] + cell.axes[1] < FIELD_SHAPE[1]
        if inside_image:
            assert result.table["centroid_col"][row] == pytest.approx(cell.center[1], abs=3)
            expected_area = np.pi * cell.axes[0] * cell.axes[1]
            assert result.table["area"][row] == pytest.approx(expected_area, rel=0.12)
        assert result.table["touches_border"][row] == (not inside_image)
        assert result.labels[cell.center] == row + 1
        assert result.table["solidity"][row] > 0.95
    assert list(result.table["source"]) == ["field"] * len(drawn)
    # colour means come from the cells, not the black background
    assert (result.table["mean_r"] > 50).all()


def test_a_result_pickles_for_worker_processes_with_its_table_intact():
    """Results cross between processes pickled with the table's columns as lists: every column
    comes back with its dtype, values (NaN included) and writable, empty tables too."""
    import pickle

    for result in (
        segment_image(field(), SegmentationParams(crop_size=64), source="field"),
        segment_image(np.zeros((40, 40, 3), np.uint8)),
    ):
        back = pickle.loads(pickle.dumps(result, protocol=5))
        assert tuple(back.table) == TABLE_COLUMNS
        for name, column in result.table.items():
            assert back.table[name].dtype == column.dtype, name
            assert back.table[name].flags.writeable, name
            np.testing.assert_array_equal(back.table[name], column)  # NaN equals NaN here
        np.testing.assert_array_equal(back.labels, result.labels)
        np.testing.assert_array_equal(back.crops, result.crops)
        assert (back.message, back.mode) == (result.message, result.mode)


def test_cell_cut_by_the_border_is_padded_not_stretched():
    result = segment_image(field(), SegmentationParams(crop_size=64))
    row = int(np.flatnonzero(result.table["touches_border"])[0])
    height = result.table["bbox_max_row"][row] - result.table["bbox_min_row"][row]
    width = result.table["bbox_max_col"][row] - result.table["bbox_min_col"][row]
    assert width < height  # the border cut a tall ellipse
    top, left, bottom, right = non_black_box(result.crops[row])
    assert (bottom - top) == pytest.approx(64, abs=1)
    assert (right - left) / (bottom - top) == pytest.approx(width / height, abs=0.05)


def test_debris_below_min_area_is_dropped_and_largest_only_keeps_one():
    image = field()
    cv2.circle(image, (300, 250), 4, (200, 200, 200), -1)  # a speck of ~50 pixels
    assert segment_image(image, SegmentationParams(min_area=1)).n_cells == len(FIELD_CELLS) + 1
    assert segment_image(image, SegmentationParams(min_area=100)).n_cells == len(FIELD_CELLS)
    largest = segment_image(image, SegmentationParams(largest_only=True))
    assert largest.n_cells == 1
    everything = segment_image(image, SegmentationParams())
    assert largest.table["area"][0] == everything.table["area"].max()
    assert set(np.unique(largest.labels)) == {0, 1}


def test_fragment_inside_a_cells_hull_is_part_of_that_cell():
    cell = [DrawnCell((150, 150), (50, 50))]
    image = draw_cells((300, 300), cell)
    cv2.circle(image, (150, 150), 20, (0, 0, 0), 3)  # a dark ring cuts off the nucleus centre
    result = segment_image(image, SegmentationParams(crop_size=32))
    assert result.n_cells == 1
    disc = cv2.circle(np.zeros((300, 300), np.uint8), (150, 150), 16, 1, -1).astype(bool)
    assert (result.labels[disc] == 1).all()
    without_centre = image.copy()
    without_centre[disc] = 0
    outer_only = segment_image(without_centre, SegmentationParams(crop_size=32))
    centre_area = result.table["area"][0] - outer_only.table["area"][0]
    assert centre_area == pytest.approx(np.pi * 17**2, rel=0.2)  # the fragment counts


def test_image_is_not_modified():
    image = field()
    before = image.copy()
    segment_image(image)
    np.testing.assert_array_equal(image, before)


# --- awkward inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "words"), [(0, "black"), (255, "uniform"), (90, "uniform")])
def test_uniform_image_gives_an_empty_result_with_a_message(value, words):
    params = SegmentationParams(crop_size=32)
    result = segment_image(np.full((40, 50, 3), value, np.uint8), params)
    check_table(result, 0)
    assert result.crops.shape == (0, 32, 32, 3)
    assert result.labels.shape == (40, 50) and not result.labels.any()
    assert "no cell" in result.message and words in result.message


def test_only_debris_gives_an_empty_result_saying_why():
    image = np.zeros((100, 100, 3), np.uint8)
    image[10:13, 10:13] = 255
    image[50:54, 70:74] = 255
    result = segment_image(image, SegmentationParams(erosion_size=1, min_area=100))
    assert result.n_cells == 0
    assert "2 region(s)" in result.message and "min_area" in result.message
    eroded_away = segment_image(image, SegmentationParams(erosion_size=7))
    assert eroded_away.n_cells == 0 and "erosion" in eroded_away.message


def test_bright_background_is_flagged():
    image = np.full((120, 120, 3), 235, np.uint8)
    cv2.circle(image, (60, 60), 25, (90, 60, 120), -1)  # a dark cell on a bright background
    result = segment_image(image, SegmentationParams(crop_size=32))
    assert result.n_cells == 1
    assert result.table["touches_border"][0]
    assert "dark background" in result.message


def test_tiny_images():
    tiny = np.zeros((6, 5, 3), np.uint8)
    tiny[2:4, 1:3] = (200, 100, 50)
    result = segment_image(tiny, SegmentationParams(crop_size=16, erosion_size=1, min_area=1))
    assert result.n_cells == 1 and result.crops.shape == (1, 16, 16, 3)
    assert result.table["area"][0] == 4
    np.testing.assert_array_equal(result.crops[0, 8, 8], (200, 100, 50))
    one_pixel = segment_image(np.full((1, 1, 3), 7, np.uint8), SegmentationParams(crop_size=8))
    assert one_pixel.n_cells == 0
    line = np.zeros((5, 9, 3), np.uint8)
    line[2, 1:8] = 255
    thin = segment_image(line, SegmentationParams(erosion_size=0, min_area=1))
    assert thin.n_cells == 1 and thin.table["hull_area"][0] == 7
    np.testing.assert_array_equal(np.nonzero(thin.labels), np.nonzero(line[..., 0]))


def test_segment_image_refuses_unconverted_arrays_with_a_hint():
    with pytest.raises(ValueError, match="to_rgb_uint8"):
        segment_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="to_rgb_uint8"):
        segment_image(np.zeros((10, 10, 3), np.float32))


def test_progress_generator_reports_stages_and_returns_the_result():
    events, work = [], segment_image_progress(field(), SegmentationParams(crop_size=32))
    while True:
        try:
            events.append(next(work))
        except StopIteration as stop:
            result = stop.value
            break
    assert all(isinstance(e, Progress) for e in events)
    assert events[-1].done == events[-1].total == len(FIELD_CELLS)
    assert len({e.message for e in events}) >= 3
    expected = segment_image(field(), SegmentationParams(crop_size=32))
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.crops, expected.crops)


def test_large_image_peak_memory_stays_a_small_multiple_of_the_image(tmp_path):
    """No float copy of the image: the extra peak is a mask, the labels and a contour buffer."""
    script = textwrap.dedent(
        """
        import resource, sys
        import cv2, numpy as np
        from napari_allbag.segmentation.dark import SegmentationParams, segment_image
        side = 4000
        image = np.zeros((side, side, 3), np.uint8)
        for row in range(100, side, 300):
            for col in range(100, side, 300):
                cv2.ellipse(image, (col, row), (90, 70), 0, 0, 360, (180, 120, 200), -1)
        segment_image(image[:50, :50].copy())  # warm up imports and OpenCV buffers
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = segment_image(image, SegmentationParams(crop_size=8))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(result.n_cells, (after - before) / image.nbytes)
        """
    )
    if sys.platform != "linux":
        pytest.skip("ru_maxrss is in kilobytes on Linux only")
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    n_cells, extra_per_image_byte = int(output[0]), float(output[1])
    assert n_cells == len(range(100, 4000, 300)) ** 2
    # mask (1 byte/px) + int32 labels (4) + OpenCV's contour copy (1) = 2 image bytes (3/px);
    # a float32 grey copy alone would add 4 bytes/px more
    assert extra_per_image_byte < 2.8


# --- files ----------------------------------------------------------------------------------


@pytest.fixture
def folder_of_cells(tmp_path) -> list[Path]:
    paths = []
    for i in range(5):
        path = tmp_path / f"cell{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(single_cell(size=120, seed=i), cv2.COLOR_RGB2BGR))
        paths.append(path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    paths.insert(2, tmp_path / "broken.png")
    paths.insert(4, tmp_path / "missing.png")
    return paths


def test_iter_segment_files_in_process_and_in_a_pool_agree(folder_of_cells):
    params = SegmentationParams(crop_size=48)
    serial = list(iter_segment_files(folder_of_cells, params, workers=1))
    pooled = list(iter_segment_files(folder_of_cells, params, workers=2, keep_labels=False))
    assert [o.path for o in serial] == [o.path for o in pooled] == folder_of_cells
    for one, other in zip(serial, pooled, strict=True):
        assert isinstance(one, FileSegmentation)
        assert (one.error is None) == (other.error is None)
        if one.error is None:
            np.testing.assert_array_equal(one.result.crops, other.result.crops)
            assert one.result.labels is not None and other.result.labels is None
    errors = {o.path.name: o.error for o in serial if o.error}
    assert set(errors) == {"broken.png", "missing.png"}
    assert "not an image" in errors["broken.png"] and "not found" in errors["missing.png"]


def test_iter_segment_files_keeps_a_bounded_number_in_flight(folder_of_cells):
    pulled = []

    def counting(paths):
        for path in paths:
            pulled.append(path)
            yield path

    consumed = 0
    paths = [p for p in folder_of_cells if p.exists()] * 4
    for _ in iter_segment_files(
        counting(paths), SegmentationParams(crop_size=16), workers=2, in_flight_per_worker=2
    ):
        consumed += 1
        assert len(pulled) - consumed <= 2 * max(2, 2 * FILES_PER_TASK)
    assert consumed == len(paths)
