"""Tiled segmentation of large images: every cell once, as in one go; TIFFs read lazily."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from napari_allbag.data.synthetic_brightfield import BrightfieldLook, make_brightfield_field
from napari_allbag.io.images import ImageReadError, read_image
from napari_allbag.progress import drive
from napari_allbag.segmentation import SegmentationParams, segment_image, tiles
from napari_allbag.segmentation.brightfield import StainLevels, segment_brightfield
from napari_allbag.segmentation.tiles import (
    LEVEL_GRID,
    LEVEL_WINDOW,
    LargeImage,
    TileOptions,
    image_levels,
    iter_tile_cells,
    level_windows,
    needs_tiling,
    open_large_image,
    plan_tiles,
    read_window,
    segment_large,
    segment_tiled,
)
from tests.segmentation.test_brightfield import shared_data

TILE, OVERLAP = 2048, 256
# Window starts are 0, 1792, 3584; window ends 2048, 3840; core edges 1920, 3712.
ON_TILE_EDGES = (1792, 1920, 2048, 3584, 3712, 3840)
MEASURED = ("centroid_row", "centroid_col", "area", "hull_area", "touches_border")
BOX = ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")


def _discs_image(shape=(5000, 5000), seed=0, max_radius=90):
    """Purple discs on black: some centred on tile and core edges, some cut by the border."""
    rng = np.random.default_rng(seed)
    height, width = shape
    wanted = [(edge, other) for edge in ON_TILE_EDGES for other in (600, 2500, 4400)]
    wanted += [(other, edge) for edge in ON_TILE_EDGES for other in (1200, 3100)]
    wanted += [(1920, 1920), (3712, 1920), (1920, 3712), (10, 2600), (height - 15, 900)]
    wanted += [(0, 4200), (3000, width - 20)]
    wanted += [tuple(rng.uniform(0, (height, width))) for _ in range(400)]
    wanted = [(row, col) for row, col in wanted if 0 <= row < height and 0 <= col < width]
    image = np.zeros((*shape, 3), np.uint8)
    placed: list[tuple[float, float, float]] = []
    for row, col in wanted:
        radius = rng.uniform(20, max_radius)
        if all(np.hypot(row - r, col - c) > radius + rr + 12 for r, c, rr in placed):
            placed.append((row, col, radius))
            colour = tuple(int(v) for v in rng.integers((90, 30, 110), (150, 80, 190)))
            cv2.circle(image, (round(col), round(row)), round(radius), colour, -1)
    return image, placed


@pytest.fixture(scope="module")
def discs():
    image, placed = _discs_image()
    whole = segment_image(image, SegmentationParams(crop_size=64), "whole")
    return image, placed, whole


def _by_centroid(table):
    return np.lexsort((table["centroid_col"], table["centroid_row"]))


def _assert_same_cells(tiled, whole, columns=MEASURED + BOX):
    a, b = _by_centroid(tiled.table), _by_centroid(whole.table)
    assert tiled.n_cells == whole.n_cells
    for name in columns:
        mine, theirs = tiled.table[name][a], whole.table[name][b]
        if name.startswith("centroid"):  # the same pixels; sums in another order of rounding
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-9, err_msg=name)
        else:
            assert np.array_equal(mine, theirs), name
    return a, b


def test_plan_tiles_cores_partition_the_image():
    shape = (5000, 4100)
    tiles = plan_tiles(shape, TILE, OVERLAP)
    owner = np.zeros(shape, np.int16)
    for tile in tiles:
        top, left, bottom, right = tile.core
        owner[top:bottom, left:right] += 1
        w_top, w_left, w_bottom, w_right = tile.window
        assert w_bottom - w_top <= TILE and w_right - w_left <= TILE
        assert w_top <= top and w_left <= left and bottom <= w_bottom and right <= w_right
    assert (owner == 1).all()
    assert len(plan_tiles((100, 100), TILE, OVERLAP)) == 1
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(shape, 256, 256)


def test_each_disc_once_with_the_same_measures_as_in_one_go(discs):
    image, placed, whole = discs
    assert whole.n_cells == len(placed) > 300
    events = []
    work = segment_tiled(image, segment_image, SegmentationParams(crop_size=64), TileOptions())
    tiled = drive(work, events.append)
    assert len(events) == len(plan_tiles(image.shape, TILE, OVERLAP)) == 9
    assert events[-1].done == events[-1].total == 9 and events[-1].metrics["cells"] == len(placed)
    a, b = _assert_same_cells(tiled, whole)
    assert np.array_equal(tiled.crops[a], whole.crops[b])
    assert tiled.table["touches_border"].sum() >= 3  # only the image border counts
    assert tiled.message == ""
    assert list(tiled.table["cell_id"]) == list(range(1, tiled.n_cells + 1))
    assert not needs_tiling(image.shape) and tiled.labels is not None  # auto: small, kept


def test_large_inputs_get_no_label_image_by_default():
    lazy = np.broadcast_to(np.zeros(3, np.uint8), (7000, 6000, 3))  # 42 MP, no memory
    assert needs_tiling(lazy.shape)
    result = drive(segment_tiled(lazy, segment_image, None, TileOptions(tile=4096)))
    assert result.labels is None and result.n_cells == 0
    assert result.message == "no cell found in any of the 4 tile(s)"


def test_label_image_when_asked_matches_one_go(discs):
    image, _, whole = discs
    options = TileOptions(keep_labels=True, keep_crops=False)
    tiled = drive(segment_tiled(image, segment_image, SegmentationParams(crop_size=64), options))
    a, b = _assert_same_cells(tiled, whole)
    assert tiled.crops.shape == (0, 64, 64, 3)
    assert np.array_equal(tiled.labels > 0, whole.labels > 0)
    mapping = np.zeros(whole.n_cells + 1, np.int32)
    mapping[whole.table["cell_id"][b]] = tiled.table["cell_id"][a]
    assert np.array_equal(mapping[whole.labels], tiled.labels)
    for part in iter_tile_cells(image, segment_image, SegmentationParams(crop_size=64), options):
        assert part.crops.base is None  # nothing of the tile's crops is kept alive
        assert len(part.masks) == len(part.table["cell_id"])


def test_overlap_smaller_than_the_cells_is_reported_not_duplicated(discs):
    image, _, whole = discs
    options = TileOptions(overlap=60, keep_crops=False)
    tiled = drive(segment_tiled(image, segment_image, SegmentationParams(), options))
    assert 0 < tiled.n_cells < whole.n_cells
    assert "raise the overlap" in tiled.message
    exact = ("area", "hull_area", "touches_border", *BOX)
    whole_cells = {tuple(row) for row in np.stack([whole.table[n] for n in exact], axis=1)}
    for row in np.stack([tiled.table[n] for n in exact], axis=1):
        assert tuple(row) in whole_cells  # every kept cell is whole, none twice
    assert len({tuple(r) for r in np.stack([tiled.table[n] for n in BOX], 1)}) == tiled.n_cells


def test_stopping_the_generator_cancels():
    image, _ = _discs_image((3000, 3000), seed=1)
    seen = []

    def counting(tile_image, params, source):
        seen.append(tile_image.shape)
        return segment_image(tile_image, params, source)

    work = segment_tiled(image, counting, None, TileOptions(tile=1024, overlap=200))
    first = next(work)
    work.close()
    assert first.done == 1 and first.total == len(plan_tiles(image.shape, 1024, 200))
    assert len(seen) == 1


def test_needs_tiling():
    assert not needs_tiling((2000, 1500, 3))
    assert not needs_tiling((6000, 6000))
    assert needs_tiling((20000, 20000, 3))
    assert needs_tiling((7000, 7000)) and not needs_tiling((7000, 7000), megapixels=50)


# --- reading large files ---------------------------------------------------------------------


def _pattern(shape=(2300, 2900)):
    rows, cols = np.indices(shape)
    return np.stack([rows % 251, cols % 241, (rows * 7 + cols * 3) % 256], axis=-1).astype(np.uint8)


def _check_windows(array, reference):
    for window in [(0, 0, 10, 10), (250, 250, 270, 530), (2000, 2700, 2300, 2900), (5, 7, 2300, 9)]:
        top, left, bottom, right = window
        assert np.array_equal(read_window(array, window), reference[top:bottom, left:right])


def test_pyramidal_tiled_compressed_tiff_is_read_lazily(tmp_path):
    reference = _pattern()
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        options = {"tile": (256, 256), "compression": "zlib", "photometric": "rgb"}
        tiff.write(reference, subifds=2, **options)
        tiff.write(reference[::2, ::2], subfiletype=1, **options)
        tiff.write(reference[::4, ::4], subfiletype=1, **options)
    image = open_large_image(path)
    try:
        assert image.access == "chunks" and image.shape == reference.shape[:2]
        assert image.levels == ((2300, 2900, 3), (1150, 1450, 3), (575, 725, 3))
        before = image.array.chunks_decoded
        patch = image.array[300:400, 600:700]
        assert image.array.chunks_decoded - before == 1  # one 256 px tile, not the image
        assert np.array_equal(patch, reference[300:400, 600:700])
        _check_windows(image.array, reference)
    finally:
        image.close()


def test_ome_tiff_and_striped_tiff_read_by_chunks(tmp_path):
    reference = _pattern()
    ome = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tiff:
        tiff.write(reference, tile=(512, 512), subifds=1, photometric="rgb", compression="zlib")
        tiff.write(reference[::2, ::2], tile=(512, 512), subfiletype=1, photometric="rgb")
    striped = tmp_path / "striped.tiff"
    tifffile.imwrite(striped, reference, rowsperstrip=64, compression="zlib", photometric="rgb")
    for path in (ome, striped):
        image = open_large_image(path)
        try:
            assert image.access == "chunks" and image.shape == (2300, 2900)
            _check_windows(image.array, reference)
        finally:
            image.close()


@pytest.mark.parametrize(
    "grey16, layout, predictor, byteorder",
    [
        (False, {"tile": (256, 256)}, False, "<"),
        (False, {"rowsperstrip": 96}, True, "<"),  # the last strip is shorter
        (True, {"tile": (256, 256)}, True, ">"),
        (True, {"rowsperstrip": 96}, False, ">"),
    ],
)
def test_zlib_chunks_inflated_by_isal_give_tifffiles_pixels(
    tmp_path, monkeypatch, grey16, layout, predictor, byteorder
):
    monkeypatch.setattr(tiles, "_has_imagecodecs", lambda: False)  # else tifffile's libdeflate
    noise = np.random.default_rng(3).integers(0, 40, (700, 900, 3), dtype=np.uint8)
    reference = _pattern((700, 900)) + noise
    if grey16:
        reference = reference[..., 0].astype(np.uint16) * 250
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(
        path, reference, compression="zlib", predictor=predictor, byteorder=byteorder, **layout
    )
    image = open_large_image(path)
    try:
        assert image.array._inflate
        for top, left, bottom, right in [
            (0, 0, 700, 900),
            (250, 250, 300, 530),
            (690, 5, 700, 899),
        ]:
            assert np.array_equal(
                image.array[top:bottom, left:right], reference[top:bottom, left:right]
            )
    finally:
        image.close()


def test_uncompressed_tiff_is_memory_mapped_and_other_formats_loaded(tmp_path):
    reference = _pattern()
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, reference, photometric="rgb")
    image = open_large_image(path)
    assert image.access == "memmap" and isinstance(image.array, np.memmap)
    _check_windows(image.array, reference)
    png = tmp_path / "field.png"
    cv2.imwrite(str(png), reference[:300, :400, ::-1])
    loaded = open_large_image(png)
    assert loaded.access == "memory" and np.array_equal(loaded.array, reference[:300, :400])


def test_grey_16_bit_tiff_becomes_rgb_per_tile(tmp_path):
    grey = (_pattern()[..., 2].astype(np.uint16) * 257).astype(np.uint16)
    path = tmp_path / "grey16.tif"
    tifffile.imwrite(path, grey, tile=(256, 256), compression="zlib")
    image = open_large_image(path)
    window = read_window(image.array, (100, 100, 300, 500))
    assert window.shape == (200, 400, 3) and window.dtype == np.uint8
    assert np.array_equal(window[..., 0], (grey[100:300, 100:500] // 257).astype(np.uint8))
    image.close()


def test_unsupported_tiffs_are_refused_with_a_reason(tmp_path):
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, np.zeros((64, 64), np.float32))
    with pytest.raises(ImageReadError, match="pixel type"):
        open_large_image(floats)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((4, 64, 64), np.uint8))
    with pytest.raises(ImageReadError, match="axes"):
        open_large_image(stack)


def test_tiled_tiff_file_with_two_workers_matches_the_array(tmp_path):
    image, placed = _discs_image((3000, 3000), seed=2)
    path = tmp_path / "discs.tif"
    tifffile.imwrite(path, image, tile=(512, 512), compression="zlib", photometric="rgb")
    params = SegmentationParams(crop_size=32)
    in_memory = drive(segment_tiled(image, segment_image, params, TileOptions(1024, 200)))
    from_file = drive(segment_tiled(path, segment_image, params, TileOptions(1024, 200, workers=2)))
    assert in_memory.n_cells == len(placed)
    _assert_same_cells(from_file, in_memory)
    assert np.array_equal(from_file.crops, in_memory.crops)
    assert set(from_file.table["source"]) == {str(path)}


def test_workers_need_a_file():
    image = np.zeros((600, 600, 3), np.uint8)
    with pytest.raises(ValueError, match="workers > 1"):
        list(iter_tile_cells(image, segment_image, None, TileOptions(256, 64, workers=2)))
    opened = LargeImage(None, image, "memory")
    with pytest.raises(ValueError, match="workers > 1"):
        list(iter_tile_cells(opened, segment_image, None, TileOptions(256, 64, workers=2)))


def test_extra_columns_of_any_segment_function_are_carried():
    image, placed = _discs_image((2600, 2600), seed=3)

    def with_reason(tile_image, params, source):
        result = segment_image(tile_image, params, source)
        result.table["kept_because"] = np.full(result.n_cells, "round", dtype=object)
        result.table["mode"] = np.full(result.n_cells, "dark", dtype=object)
        return result

    tiled = drive(segment_tiled(image, with_reason, None, TileOptions(1024, 200, keep_crops=False)))
    assert tiled.n_cells == len(placed)
    assert list(tiled.table["kept_because"]) == ["round"] * len(placed)
    assert set(tiled.table["mode"]) == {"dark"}


# --- bright-field levels measured once for the whole image ----------------------------------------


def _centroids(result) -> np.ndarray:
    return np.stack([result.table["centroid_row"], result.table["centroid_col"]], axis=1)


def _matched(found, reference, tolerance=3.0) -> int:
    """How many of `found`'s cells have a cell of `reference` within `tolerance` px."""
    if not found.n_cells or not reference.n_cells:
        return 0
    a, b = _centroids(found), _centroids(reference)
    distance = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    return int(np.count_nonzero(distance.min(axis=1) < tolerance))


@pytest.fixture(scope="module")
def large_smear():
    """A generated smear of 16 white cells at half scale (red-cell radius ~17 px)."""
    look = BrightfieldLook(scale=0.5)
    return make_brightfield_field(7, (1500, 2000), 16, 2, 2, look=look)


def test_level_windows_spread_over_the_image_or_take_it_whole(monkeypatch):
    assert level_windows((1500, 2000, 3)) == [(0, 0, 1500, 2000)]
    windows = level_windows((20000, 30000, 3))
    assert len(windows) == LEVEL_GRID**2
    assert all(b - t == r - left == LEVEL_WINDOW for t, left, b, r in windows)
    assert windows[0][:2] == (0, 0) and windows[-1][2:] == (20000, 30000)
    monkeypatch.setattr("napari_allbag.segmentation.tiles.LEVEL_WINDOW", 512)
    assert len(level_windows((1500, 2000))) == 3 * 4


def test_bright_field_tiles_find_the_same_cells_whatever_their_size(large_smear, monkeypatch):
    """Per-tile thresholds lost cells in small tiles (5 of 14 here at 256 px); the whole image's
    levels, measured once on a grid of windows, give every tile size the cells of one go."""
    monkeypatch.setattr(
        "napari_allbag.segmentation.tiles.LEVEL_WINDOW", 512
    )  # a grid, as on slides
    image, truth = large_smear
    params = SegmentationParams(background="bright", crop_size=32)
    whole = segment_brightfield(image, params)
    assert whole.n_cells >= len([c for c in truth.white_cells if c.label == "all"])
    levels = image_levels(image)
    assert isinstance(levels, StainLevels) and levels.measured
    assert abs(levels.radius - whole_radius(image)) < 0.15 * levels.radius
    # 256 and 1024 px tiles at half scale: 512 and 2048 at full scale, in red-cell radii
    small, large = (
        drive(segment_large(image, params, TileOptions(tile, 128, keep_crops=False)))
        for tile in (256, 1024)
    )
    assert small.mode == large.mode == "bright"
    assert abs(small.n_cells - large.n_cells) <= 1
    assert _matched(small, large) >= large.n_cells - 1
    for tiled in (small, large):
        assert _matched(tiled, whole) >= whole.n_cells - 1
        assert tiled.n_cells <= whole.n_cells + 1


def whole_radius(image) -> float:
    from napari_allbag.segmentation.brightfield import _scene

    return _scene(image).radius


def test_tiles_of_real_fields_find_the_cells_of_one_go():
    """The real fields cut into 400 px tiles (most are 400-1300 px a side): with the image's
    levels, the tiles find what one go finds (per-tile levels: 50 of 59 on the sample)."""
    fields = sorted((shared_data("brightfield_sample") / "fields").glob("*.jpg"))
    params = SegmentationParams(background="bright", crop_size=32)
    whole_cells = matched = found = 0
    for path in fields:
        image = read_image(path)
        whole = segment_brightfield(image, params)
        tiled = drive(segment_large(image, params, TileOptions(400, 200, keep_crops=False)))
        whole_cells, found = whole_cells + whole.n_cells, found + tiled.n_cells
        matched += _matched(tiled, whole)
    assert whole_cells > 50
    assert matched >= 0.95 * whole_cells and found <= whole_cells + 2


def test_a_compression_that_cannot_be_decoded_is_refused_on_opening(tmp_path):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, _pattern()[:600, :600], tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(path, mode="r+") as tif:  # zlib data labelled LZW: undecodable
        tif.pages[0].tags["Compression"].overwrite(5)
    with pytest.raises(ImageReadError, match="LZW compression could not be decoded"):
        open_large_image(path)


def test_windows_sharing_tiff_tiles_decode_them_once(tmp_path):
    reference = _pattern()
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, reference, tile=(256, 256), compression="zlib", photometric="rgb")
    image = open_large_image(path)
    try:
        before = image.array.chunks_decoded
        first = read_window(image.array, (0, 0, 512, 600))  # 2 x 3 TIFF tiles
        second = read_window(image.array, (0, 500, 512, 1100))  # shares the third column
        assert image.array.chunks_decoded - before == 6 + 4
        assert np.array_equal(first, reference[:512, :600])
        assert np.array_equal(second, reference[:512, 500:1100])
    finally:
        image.close()
