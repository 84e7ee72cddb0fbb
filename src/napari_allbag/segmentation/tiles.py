"""Segment images too large for memory in overlapping tiles, each cell found once.

A whole-slide scan or a large TIFF (tens of thousands of pixels a side) is opened without
loading it (`open_large_image`): an uncompressed contiguous TIFF is memory-mapped
(``tifffile.memmap``); a tiled, striped or compressed one (OME-TIFF, pyramidal TIFF with SubIFDs
or with pages) is read region by region by `TiffChunkReader`, which decodes only the TIFF tiles
or strips a region touches (tifffile's own ``TiffPage.decode``; no zarr needed, which this
project does not depend on). zlib chunks of the common layouts are inflated with ISA-L (the
`isal` dependency) instead: without imagecodecs, tifffile falls back to the standard library's
zlib, twice as slow, and inflating was a third of the workers' time on a 20,000 px zlib TIFF. Pyramids give their full-resolution level. Other formats are read
whole with `read_image`.

`segment_tiled` then runs any per-image segmentation ``segment_fn(image, params, source) ->
SegmentationResult`` (the dark-field `segment_image`, the bright-field one) on overlapping
windows and merges the cells into one result in full-image coordinates.

Cells on tile borders are found once: the windows' *cores* (each window minus half the overlap
on every side shared with a neighbour) partition the image, and a window keeps exactly the cells
whose centroid lies in its core and that do not touch one of its inner edges. A cell whose
centroid is in a core lies whole inside that window as long as no pixel of it is more than
``overlap / 2`` from its centroid, so: **the overlap must exceed the largest cell's diameter**
(for round cells; twice the largest centroid-to-edge distance in general). A cell too large for
the overlap is cut by the window's edge and left out, and the result's message says how many
were (raise the overlap). The per-image segmentation must also decide locally: a threshold
taken over each window (Otsu) is the same in every window only where every window holds both
cells and background. So `segment_large` decides the background mode once for the whole image,
and for bright-field measures the scale and stain thresholds once (`image_levels`) and gives
them to every tile: the cells found then do not depend on the tile size.

Memory: one window per worker in flight (a 2048 px tile with 256 px overlap is about 15 MB of
RGB, and its TIFF tiles kept for the next window about as much again) plus the cells' rows and
crops (of up to 4 tasks of `TILES_PER_TASK` tiles in flight); no full-size label image unless asked (`keep_labels`): a
20,000 x 20,000 int32 label image alone is 1.6 GB. Cancel by no longer iterating the generator
(closing it stops the worker pool).
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency
    isal_zlib = None

from napari_allbag.io.images import ImageReadError, read_image, to_rgb_uint8
from napari_allbag.io.ordered_pool import ordered_map
from napari_allbag.progress import Progress
from napari_allbag.segmentation.dark import SegmentationResult

#: Images above this many megapixels are segmented in tiles (36 MP: a 6000 x 6000 field; its
#: full-image int32 labels and temporaries alone would take about 300 MB).
TILING_MEGAPIXELS = 36.0
DEFAULT_TILE = 2048
DEFAULT_OVERLAP = 256
#: Worker processes take this many neighbouring tiles at a time: each reuses the TIFF tiles
#: its previous window decoded along their shared edge (see `TiffChunkReader`).
TILES_PER_TASK = 4
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".svs", ".ome.tif", ".ome.tiff")
_TILEABLE_DTYPES = (np.uint8, np.uint16, np.bool_)
#: TIFF compression codes of zlib: Adobe deflate and the older deflate.
_ZLIB_CODES = (8, 32946)

SegmentFn = Callable[[np.ndarray, Any, str], SegmentationResult]


def needs_tiling(shape: tuple[int, ...], megapixels: float = TILING_MEGAPIXELS) -> bool:
    """True when an image of `shape` (rows, cols, ...) is too large to segment in one go."""
    return shape[0] * shape[1] > megapixels * 1e6


# --- opening large images -----------------------------------------------------------------------


class TiffChunkReader:
    """Array-like view of one TIFF page: slicing decodes only the tiles or strips it touches.

    Supports ``reader[top:bottom, left:right]`` (steps of 1) and `shape` / `dtype` / `ndim`.
    The chunks decoded for one read are kept until the next, which takes from them the ones it
    shares (a tile's window and the next one along its row share a column of TIFF tiles): at
    most one window's chunks are held. `chunks_decoded` counts decoded chunks (to see that reads
    stay local). Thread-safe.
    """

    def __init__(self, path: str | os.PathLike, page) -> None:
        self.path = Path(path)
        self._page = page
        self._handle = page.parent.filehandle
        self._lock = threading.Lock()
        self.shape = tuple(page.shape)
        self.dtype = page.dtype
        self.ndim = len(self.shape)
        if page.is_tiled:
            self._chunk = (page.tilelength, page.tilewidth)
        else:
            self._chunk = (page.rowsperstrip or page.imagelength, page.imagewidth)
        self._chunks_across = math.ceil(page.imagewidth / self._chunk[1])
        self._inflate = _inflatable(page)
        self._last_read: dict[int, tuple[np.ndarray, tuple[int, int]] | None] = {}
        self.chunks_decoded = 0

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = (key + (slice(None),))[:2] if isinstance(key, tuple) else (key, slice(None))
        top, bottom, row_step = rows.indices(self.shape[0])
        left, right, col_step = cols.indices(self.shape[1])
        if row_step != 1 or col_step != 1:
            raise IndexError("TiffChunkReader supports slices with step 1 only")
        return self.read(top, left, max(top, bottom), max(left, right))

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        """The region [top:bottom, left:right] as a new array."""
        out = np.zeros((bottom - top, right - left, *self.shape[2:]), self.dtype)
        chunk_h, chunk_w = self._chunk
        previous, current = self._last_read, {}
        for chunk_row in range(top // chunk_h, math.ceil(bottom / chunk_h)):
            for chunk_col in range(left // chunk_w, math.ceil(right / chunk_w)):
                index = chunk_row * self._chunks_across + chunk_col
                chunk = previous[index] if index in previous else self._decode(index)
                current[index] = chunk
                if chunk is not None:
                    _paste(chunk, out, top, left)
        self._last_read = current
        return out

    def check_decodable(self) -> None:
        """Decode one chunk now, so that a compression tifffile cannot decode without the
        optional `imagecodecs` (JPEG, LZW, JPEG 2000, zstd, ...) is refused on opening, in words,
        rather than by every tile."""
        try:
            self._decode(0)
        except Exception as error:  # noqa: BLE001 - codecs raise many kinds of errors
            compression = getattr(self._page.compression, "name", self._page.compression)
            hint = ""
            if not _has_imagecodecs():
                hint = (
                    "; TIFFs compressed otherwise than zlib (LZW, JPEG, ...) need imagecodecs: "
                    "pip install 'napari-allbag[tiff]'"
                )
            raise ImageReadError(
                self.path, f"{compression} compression could not be decoded ({error}){hint}"
            ) from None

    def _decode(self, index: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Chunk `index` as (pixels rows x cols x samples, its top-left corner); None if empty."""
        page = self._page
        with self._lock:
            self._handle.seek(page.dataoffsets[index])
            data = self._handle.read(page.databytecounts[index])
            self.chunks_decoded += 1
        if not data:
            return None  # an empty chunk: zeros
        if self._inflate:
            inflated = self._inflated(data, index)
            if inflated is not None:
                return inflated
        segment, position, _ = page.decode(data, index, jpegtables=page.jpegtables)
        return segment[0], (position[2], position[3])

    def _inflated(self, data: bytes, index: int) -> tuple[np.ndarray, tuple[int, int]] | None:
        """zlib chunk `index` inflated by ISA-L, as `_decode` gives it; None where the data is
        short or corrupt (tifffile then decodes it, or says why not)."""
        page, (rows, cols) = self._page, self._chunk
        top, left = divmod(index, self._chunks_across)
        top, left = top * rows, left * cols
        if not page.is_tiled:
            rows = min(rows, page.imagelength - top)  # the last strip may be shorter
        stored = np.dtype(page.dtype).newbyteorder(page.parent.byteorder)
        count = rows * cols * page.samplesperpixel
        try:
            raw = isal_zlib.decompress(data, bufsize=count * stored.itemsize)
        except isal_zlib.error:
            return None
        if len(raw) < count * stored.itemsize:
            return None
        pixels = np.frombuffer(raw, stored, count).reshape(rows, cols, page.samplesperpixel)
        pixels = pixels.astype(page.dtype, copy=False)  # native byte order
        if page.predictor == 2:  # horizontal differencing, modulo 2**bits like the writer's
            pixels = np.cumsum(pixels, axis=1, dtype=pixels.dtype)
        return pixels, (top, left)


def _inflatable(page) -> bool:
    """True where `TiffChunkReader._inflated` decodes the page's chunks: zlib, unsigned 8- or
    16-bit samples interleaved, no predictor or the horizontal one, and no imagecodecs (with it
    tifffile inflates with libdeflate, about 15 % faster than ISA-L)."""
    return (
        isal_zlib is not None
        and page.compression in _ZLIB_CODES
        and page.predictor in (1, 2)
        and np.dtype(page.dtype) in (np.uint8, np.uint16)
        and page.bitspersample == np.dtype(page.dtype).itemsize * 8
        and page.sampleformat == 1
        and page.fillorder == 1
        and page.planarconfig == 1
        and page.imagedepth == 1
        and not page.is_subsampled
        and not _has_imagecodecs()
    )


def _has_imagecodecs() -> bool:
    return importlib.util.find_spec("imagecodecs") is not None


def _paste(chunk: tuple[np.ndarray, tuple[int, int]], out: np.ndarray, top: int, left: int):
    """Copy the part of a decoded chunk that falls in `out` (whose corner is top, left)."""
    segment, (row, col) = chunk
    row0, col0 = row - top, col - left
    src_rows = slice(max(0, -row0), min(segment.shape[0], out.shape[0] - row0))
    src_cols = slice(max(0, -col0), min(segment.shape[1], out.shape[1] - col0))
    if src_rows.start >= src_rows.stop or src_cols.start >= src_cols.stop:
        return
    target = out[
        row0 + src_rows.start : row0 + src_rows.stop,
        col0 + src_cols.start : col0 + src_cols.stop,
    ]
    target[...] = segment[src_rows, src_cols].reshape(target.shape)


@dataclass
class LargeImage:
    """An image opened for tiled reading. `array` slices lazily unless `access` is "memory".

    access: "memmap" (uncompressed contiguous TIFF), "chunks" (`TiffChunkReader`) or "memory".
    levels: shapes of the pyramid levels (level 0, the one read, first).
    """

    path: Path | None
    array: Any
    access: str
    levels: tuple[tuple[int, ...], ...] = ()
    _owner: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape[:2])

    def close(self) -> None:
        if self._owner is not None:
            self._owner.close()
            self._owner = None


def open_large_image(path: str | os.PathLike) -> LargeImage:
    """Open `path` for tiled reading: TIFFs lazily (full-resolution level), others in memory."""
    path = Path(path)
    if not path.name.lower().endswith(_TIFF_SUFFIXES):
        return LargeImage(path, read_image(path), "memory")
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as error:  # tifffile raises many kinds of errors on bad files
        raise ImageReadError(path, f"not a readable TIFF ({error})") from None
    try:
        return _open_tiff_level0(path, tif)
    except Exception:
        tif.close()
        raise


def _open_tiff_level0(path: Path, tif) -> LargeImage:
    import tifffile

    series = tif.series[0]
    level = series.levels[0]
    levels = tuple(tuple(lv.shape) for lv in series.levels)
    page = level.keyframe
    if level.axes not in ("YX", "YXS") or len(level.pages) != 1:
        raise ImageReadError(
            path,
            f"axes {level.axes!r} (shape {level.shape}): tiled reading needs one YX or "
            "YXS (RGB) image per level; save one plane or an RGB image",
        )
    if page.samplesperpixel > 1 and page.planarconfig != 1:
        raise ImageReadError(path, "planar (separate-channel) TIFF: save it channel-interleaved")
    _check_tileable_dtype(page.dtype, path)
    if page.is_memmappable:
        array = tifffile.memmap(path, series=0, level=0, mode="r")
        tif.close()
        return LargeImage(path, array, "memmap", levels)
    reader = TiffChunkReader(path, page)
    reader.check_decodable()
    return LargeImage(path, reader, "chunks", levels, _owner=tif)


def _check_tileable_dtype(dtype, path: Path | str = "image") -> None:
    if np.dtype(dtype).type not in _TILEABLE_DTYPES:
        raise ImageReadError(
            path,
            f"pixel type {np.dtype(dtype)}: tiled reading supports uint8, uint16 and bool "
            "(other types would be rescaled differently in every tile)",
        )


def read_window(array, window: tuple[int, int, int, int]) -> np.ndarray:
    """Rows top:bottom, cols left:right of any sliceable image, as contiguous HxWx3 uint8 RGB."""
    top, left, bottom, right = window
    return to_rgb_uint8(np.asarray(array[top:bottom, left:right]))


# --- tiles --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One window to segment and its core, both (top, left, bottom, right) in image pixels.

    The cores of all tiles partition the image; the window is the core grown by half the
    overlap towards each neighbour.
    """

    index: int
    window: tuple[int, int, int, int]
    core: tuple[int, int, int, int]


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: (window start, window end, core start, core end) per tile."""
    step = tile - overlap
    count = max(1, math.ceil((length - overlap) / step)) if length > tile else 1
    spans = []
    for i in range(count):
        start, end = i * step, min(length, i * step + tile)
        core_start = 0 if i == 0 else start + overlap // 2
        core_end = length if i == count - 1 else end - (overlap - overlap // 2)
        spans.append((start, end, core_start, core_end))
    return spans


def plan_tiles(shape: tuple[int, ...], tile: int, overlap: int) -> list[Tile]:
    """Overlapping windows of side `tile` (smaller at the far edges) covering `shape`."""
    if not 0 <= overlap < tile:
        raise ValueError(
            f"overlap must be at least 0 and less than the tile ({tile}), got {overlap}"
        )
    rows, cols = _spans(shape[0], tile, overlap), _spans(shape[1], tile, overlap)
    return [
        Tile(i * len(cols) + j, (r[0], c[0], r[1], c[1]), (r[2], c[2], r[3], c[3]))
        for i, r in enumerate(rows)
        for j, c in enumerate(cols)
    ]


@dataclass(frozen=True)
class TileOptions:
    """How to tile: window side, overlap (> the largest cell's diameter), worker processes.

    keep_labels: build a full-size int32 label image (None: only when the image does not need
        tiling, see `needs_tiling`). keep_crops: keep each cell's crop (False: `crops` is empty,
        for counting or measuring without the 268 kB per 299 px crop).
    """

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    workers: int = 1
    keep_labels: bool | None = None
    keep_crops: bool = True


@dataclass
class TileCells:
    """The cells one tile keeps, table in full-image coordinates.

    masks: per kept cell, its box (top, left, bottom, right) and bool mask (only with labels).
    too_large: cells owned by this tile but cut by its edge (larger than the overlap allows).
    """

    tile: Tile
    table: dict[str, np.ndarray]
    crops: np.ndarray | None
    masks: list[tuple[tuple[int, int, int, int], np.ndarray]] | None
    too_large: int
    message: str


def segment_tile(array, tile: Tile, job: _TileJob) -> TileCells:
    """Read one window, segment it and keep the cells this tile owns."""
    image = read_window(array, tile.window)
    result = job.segment_fn(image, job.params, job.source)
    del image
    keep, too_large = _owned_cells(result.table, tile, job.image_shape)
    table = _to_image_coordinates(result.table, keep, tile, job.image_shape)
    if job.keep_crops:
        crops = result.crops[keep]
    else:  # a new empty array: a [:0] view would keep the whole tile's crops alive
        crops = np.empty((0, *result.crops.shape[1:]), np.uint8)
    masks = _cell_masks(result, keep, table, tile) if job.keep_labels else None
    return TileCells(tile, table, crops, masks, too_large, result.message)


def _owned_cells(table, tile: Tile, image_shape) -> tuple[np.ndarray, int]:
    """Indices of the cells whose centroid is in the core and that no inner edge cuts."""
    top, left, bottom, right = tile.window
    core_top, core_left, core_bottom, core_right = tile.core
    rows, cols = table["centroid_row"] + top, table["centroid_col"] + left
    in_core = (rows >= core_top) & (rows < core_bottom) & (cols >= core_left) & (cols < core_right)
    height, width = image_shape
    cut = (
        ((table["bbox_min_row"] == 0) & (top > 0))
        | ((table["bbox_min_col"] == 0) & (left > 0))
        | ((table["bbox_max_row"] == bottom - top) & (bottom < height))
        | ((table["bbox_max_col"] == right - left) & (right < width))
    )
    return np.flatnonzero(in_core & ~cut), int(np.count_nonzero(in_core & cut))


def _to_image_coordinates(table, keep: np.ndarray, tile: Tile, image_shape) -> dict:
    top, left = tile.window[:2]
    out = {name: np.asarray(column)[keep] for name, column in table.items()}
    for name, offset in (("centroid_row", top), ("bbox_min_row", top), ("bbox_max_row", top)):
        out[name] = out[name] + offset
    for name, offset in (("centroid_col", left), ("bbox_min_col", left), ("bbox_max_col", left)):
        out[name] = out[name] + offset
    height, width = image_shape
    out["touches_border"] = (
        (out["bbox_min_row"] == 0)
        | (out["bbox_min_col"] == 0)
        | (out["bbox_max_row"] == height)
        | (out["bbox_max_col"] == width)
    )
    return out


def _cell_masks(result: SegmentationResult, keep, table, tile: Tile):
    top, left = tile.window[:2]
    masks = []
    for row, index in enumerate(keep):
        box = tuple(int(table[name][row]) for name in _BOX)
        local = result.labels[box[0] - top : box[2] - top, box[1] - left : box[3] - left]
        masks.append((box, local == result.table["cell_id"][index]))
    return masks


_BOX = ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")


@dataclass(frozen=True)
class _TileJob:
    """What every tile needs besides its window; picklable for worker processes."""

    segment_fn: SegmentFn
    params: Any
    source: str
    image_shape: tuple[int, int]
    keep_labels: bool
    keep_crops: bool


_OPENED: dict[str, LargeImage] = {}


def _segment_tile_from_file(tile: Tile, path: str, job: _TileJob) -> TileCells:
    """Worker-process task: open the file once per process, read and segment one tile."""
    image = _OPENED.get(path)
    if image is None:
        for old in _OPENED.values():
            old.close()
        _OPENED.clear()
        image = _OPENED[path] = open_large_image(path)
    return segment_tile(image.array, tile, job)


def iter_tile_cells(
    source, segment_fn: SegmentFn, params=None, options: TileOptions | None = None, name: str = ""
) -> Iterator[TileCells]:
    """Each tile's kept cells, in tile order (stream these to classify a slide tile by tile).

    `source`: a file path, a `LargeImage`, or any array-like HxW[xC] that slices lazily (a numpy
    array or memmap, a napari multiscale layer's ``data[0]``, a dask or zarr array). With
    ``options.workers > 1`` the source must be a file path or a `LargeImage` read from one:
    each worker opens the file and reads its own tiles, so no image data is pickled.
    """
    options = options or TileOptions()
    image = source if isinstance(source, LargeImage) else None
    if isinstance(source, (str, os.PathLike)):
        image = open_large_image(source)
    array = image.array if image is not None else source
    _check_tileable_dtype(array.dtype)
    shape = tuple(array.shape[:2])
    job = _make_job(segment_fn, params, name or _name_of(image), shape, options)
    tiles = plan_tiles(shape, options.tile, options.overlap)
    try:
        if options.workers <= 1:
            yield from (segment_tile(array, tile, job) for tile in tiles)
            return
        if image is None or image.path is None or image.access == "memory":
            raise ValueError("workers > 1 needs a TIFF file the workers can open themselves")
        results = ordered_map(
            _segment_tile_from_file,
            tiles,
            (str(image.path), job),
            options.workers,
            chunk_size=TILES_PER_TASK,
        )
        try:
            yield from results
        finally:
            results.close()
    finally:
        if image is not None and image is not source:
            image.close()


def _name_of(image: LargeImage | None) -> str:
    return str(image.path) if image is not None and image.path is not None else ""


def _make_job(segment_fn, params, name, shape, options: TileOptions) -> _TileJob:
    keep_labels = options.keep_labels
    if keep_labels is None:
        keep_labels = not needs_tiling(shape)
    return _TileJob(segment_fn, params, name, shape, bool(keep_labels), options.keep_crops)


def segment_tiled(
    source, segment_fn: SegmentFn, params=None, options: TileOptions | None = None, name: str = ""
) -> Generator[Progress, None, SegmentationResult]:
    """Segment a large image tile by tile; yields Progress per tile, returns one result.

    Coordinates, bounding boxes and `touches_border` refer to the whole image; cell ids are
    1..N in raster order of the cells' bounding boxes (top, then left). `labels` is the
    full-size int32 label image when kept (see `TileOptions.keep_labels`), else None.
    See the module docstring for why `options.overlap` must exceed the largest cell diameter.
    """
    options = options or TileOptions()
    opened = open_large_image(source) if isinstance(source, (str, os.PathLike)) else None
    target = opened if opened is not None else source
    try:
        shape = _shape_of(target)
        total = len(plan_tiles(shape, options.tile, options.overlap))
        parts: list[TileCells] = []
        cells = 0
        stream = iter_tile_cells(target, segment_fn, params, options, name)
        try:
            for part in stream:
                parts.append(part)
                cells += len(part.table["cell_id"])
                yield Progress(len(parts), total, "segmenting tiles", "", {"cells": cells})
        finally:
            stream.close()
    finally:
        if opened is not None:
            opened.close()
    return _merge(parts, shape)


def _shape_of(source) -> tuple[int, int]:
    array = source.array if isinstance(source, LargeImage) else source
    return tuple(array.shape[:2])


def _merge(parts: list[TileCells], shape: tuple[int, int]) -> SegmentationResult:
    """One result from the tiles' kept cells, ordered by bounding box (top, left)."""
    names = list(parts[0].table)
    table = {name: np.concatenate([p.table[name] for p in parts]) for name in names}
    order = np.lexsort((table["bbox_min_col"], table["bbox_min_row"]))
    table = {name: column[order] for name, column in table.items()}
    table["cell_id"] = np.arange(1, len(order) + 1, dtype=table["cell_id"].dtype)
    crops = _merged_crops(parts, order)
    labels = _merged_labels(parts, order, shape) if parts[0].masks is not None else None
    return SegmentationResult(labels, table, crops, _merged_message(parts, len(order)))


def _merged_crops(parts: list[TileCells], order: np.ndarray) -> np.ndarray:
    """Crops in the merged order, each tile's released once copied.

    The allocator rarely hands the tiles' freed memory back at once, so merging briefly holds
    the crops about twice (268 kB per cell at 299 px): for whole slides, use
    ``keep_crops=False`` or stream `iter_tile_cells`.
    """
    n_kept = sum(len(p.crops) for p in parts)
    out = np.empty((n_kept, *parts[0].crops.shape[1:]), np.uint8)
    if n_kept == 0:
        return out
    destination = np.empty_like(order)
    destination[order] = np.arange(len(order))
    start = 0
    for part in parts:
        count = len(part.crops)
        out[destination[start : start + count]] = part.crops
        part.crops = None  # a view would keep the tile's array alive
        start += count
    return out


def _merged_labels(parts: list[TileCells], order: np.ndarray, shape) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    masks = [mask for part in parts for mask in part.masks]
    for cell_id, index in enumerate(order, start=1):
        (top, left, bottom, right), mask = masks[index]
        np.copyto(labels[top:bottom, left:right], np.int32(cell_id), where=mask)
    return labels


def _merged_message(parts: list[TileCells], n_cells: int) -> str:
    notes = []
    if n_cells == 0:
        notes.append(f"no cell found in any of the {len(parts)} tile(s)")
    too_large = sum(p.too_large for p in parts)
    if too_large:
        notes.append(
            f"{too_large} cell(s) larger than the tile overlap were cut by tile edges and left "
            "out: raise the overlap above the largest cell's diameter"
        )
    odd = sorted({p.message for p in parts if p.message and len(p.table["cell_id"])})
    notes += [f"in some tiles: {message}" for message in odd[:3]]
    return "; ".join(notes)


# --- one mode for the whole image ---------------------------------------------------------------


def tiff_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """Shape of a TIFF's full-resolution level read from its header (no pixels), else None
    (not a TIFF, or unreadable: the ordinary reading then reports why)."""
    path = Path(path)
    if not path.name.lower().endswith(_TIFF_SUFFIXES):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.series[0].levels[0].shape)
    except Exception:  # noqa: BLE001 - tifffile raises many kinds of errors on bad files
        return None


def overview(array, side: int = 1024) -> np.ndarray:
    """A small RGB view of a large array for whole-image decisions: every k-th pixel where the
    array slices with steps (numpy, memmap, dask, zarr), else its central window."""
    height, width = array.shape[:2]
    step = max(1, math.ceil(max(height, width) / side))
    try:
        return to_rgb_uint8(np.asarray(array[::step, ::step]))
    except (IndexError, TypeError, ValueError):  # TiffChunkReader: steps of 1 only
        top, left = max(0, (height - 2 * side) // 2), max(0, (width - 2 * side) // 2)
        return read_window(
            array, (top, left, min(height, top + 2 * side), min(width, left + 2 * side))
        )


#: A large bright-field image's levels are measured on windows of this side (about 150 red cells
#: of 30 px radius each: enough for the scale; tiles below ~800 px were not, see `image_levels`)...
LEVEL_WINDOW = 1024
#: ... at most this many across and down (4 x 4: 17 MP of a 400 MP slide, ~4 %).
LEVEL_GRID = 4


def level_windows(shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Windows (top, left, bottom, right) spread evenly over an image, on which its bright-field
    levels are measured: the whole image where it is at most four windows large."""
    height, width = shape[:2]
    side, grid = LEVEL_WINDOW, LEVEL_GRID
    if height * width <= 4 * side * side:
        return [(0, 0, height, width)]
    tops = _even_starts(height, side, min(grid, math.ceil(height / side)))
    lefts = _even_starts(width, side, min(grid, math.ceil(width / side)))
    return [
        (top, left, min(height, top + side), min(width, left + side))
        for top in tops
        for left in lefts
    ]


def _even_starts(length: int, side: int, count: int) -> list[int]:
    if count <= 1:
        return [max(0, (length - side) // 2)]
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def image_levels(array):
    """The bright-field scale and stain thresholds of a whole large image, for every tile.

    Measured per tile (Otsu on the tile's stain, its own red cells' radius), they differ from
    tile to tile, and a small tile (a few red cells, no white cell) misreads them and loses
    cells; measured once on windows spread over the image (`level_windows`, read one at a time:
    bounded memory), the tiles' cells no longer depend on the tile size.
    Returns `brightfield.StainLevels`, or a string where the windows are all black or uniform.
    """
    from napari_allbag.segmentation.brightfield import measure_levels

    return measure_levels(read_window(array, window) for window in level_windows(array.shape))


def segment_large(
    source, params=None, options: TileOptions | None = None, name: str = ""
) -> Generator[Progress, None, SegmentationResult]:
    """`segment_tiled` with the background mode decided once for the whole image (tiles of pure
    background or of one cell would each decide differently) and, for bright-field, the scale and
    stain thresholds measured once (`image_levels`); the result says which mode ran, whether it
    was guessed, and what looks wrong, like `segment_auto`'s."""
    from napari_allbag.segmentation.brightfield import (
        detect_background,
        segment_auto,
        segment_brightfield,
    )
    from napari_allbag.segmentation.dark import SegmentationParams

    params = params or SegmentationParams()
    opened = open_large_image(source) if isinstance(source, (str, os.PathLike)) else None
    target = opened if opened is not None else source
    try:
        array = target.array if isinstance(target, LargeImage) else target
        guess = None
        mode = params.background
        if mode == "auto":
            yield Progress(0, None, "segmenting tiles", "choosing the background mode")
            guess = detect_background(overview(array))
            mode = guess.mode
        fixed = replace(params, background=mode)
        segment_fn = segment_auto
        if mode == "bright":
            yield Progress(0, None, "segmenting tiles", "measuring the stain levels")
            levels = image_levels(array)
            if not isinstance(levels, str):  # else each tile measures its own
                segment_fn = partial(segment_brightfield, levels=levels)
        result = yield from segment_tiled(target, segment_fn, fixed, options, name)
    finally:
        if opened is not None:
            opened.close()
    result.mode, result.auto = mode, guess is not None
    if guess is not None and not guess.confident:
        result.guessed = guess.reason
    result.doubtful = result.message if result.n_cells else ""
    return result
