"""The paper's cell segmentation, with OpenCV.

Liu & Long (2019), Sec. 2.2: grey scale, Otsu threshold, erosion, convex hull, then a patch with
the cell in the middle resized to 299x299. Here each connected component of the eroded mask is a
cell (so a field of several separated cells gives several cells, a C-NMC image exactly one):

1. grey = BT.601 luma of the RGB image (``cv2.COLOR_RGB2GRAY``);
2. foreground = grey > Otsu threshold of the whole grey image, as the paper says. On C-NMC
   images the black background dominates the histogram, so the threshold lands just above it
   (0 to 33 on the 62 real cells) and the whole stained cell, nucleus and cytoplasm, is
   foreground. (Otsu over the non-black pixels only would split nucleus from cytoplasm.);
3. erosion with a square `erosion_size` x `erosion_size` footprint (anchor at ``size // 2``;
   pixels beyond the image border do not erode), which cuts thin bridges and specks;
4. 8-connected components; components smaller than `min_area` pixels are debris and dropped;
   a component lying inside a bigger one's convex hull (a fragment cut off by a dark ring) is
   merged into it; cells are numbered 1..N in raster order of their first pixel (as
   ``skimage.measure.label``);
5. per cell: convex hull of the component, filled; the crop is the smallest square centred on the
   hull's bounding box (black where it leaves the image: pad, never stretch), every pixel outside
   the hull black, resized to `crop_size`.

A uniform image (all black, all white, any constant) has no cell: the result is empty and its
`message` says why; so does an image whose regions are all debris. A cell covering more than half
the image is kept but flagged in `message` (a bright background?). Memory beyond the input and the
crops: the int32 label image plus about two bytes per pixel, no float copy of the image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from napari_allbag.defaults import BACKGROUND_MODES
from napari_allbag.io.images import ImageReadError, read_image
from napari_allbag.io.ordered_pool import DEPTH, ordered_map
from napari_allbag.progress import Progress, drive

#: Columns of `SegmentationResult.table`, in order.
TABLE_COLUMNS = (
    "cell_id",
    "source",
    "centroid_row",
    "centroid_col",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "area",
    "hull_area",
    "solidity",
    "equivalent_diameter",
    "mean_r",
    "mean_g",
    "mean_b",
    "touches_border",
    "mode",
    "keep_reason",
    "nucleus_area_rbc",
)

_COLUMN_TYPES = {
    "cell_id": np.int32,
    "source": object,
    "centroid_row": np.float64,
    "centroid_col": np.float64,
    "bbox_min_row": np.int64,
    "bbox_min_col": np.int64,
    "bbox_max_row": np.int64,
    "bbox_max_col": np.int64,
    "area": np.int64,
    "hull_area": np.int64,
    "solidity": np.float64,
    "equivalent_diameter": np.float64,
    "mean_r": np.float64,
    "mean_g": np.float64,
    "mean_b": np.float64,
    "touches_border": np.bool_,
    "mode": object,
    "keep_reason": object,
    "nucleus_area_rbc": np.float64,
}


#: A cell covering more than this fraction of the image suggests a bright background.
_MOST_OF_IMAGE = 0.5
#: More cells than this in an image no larger than `_CROP_SIZED_AREA` pixels (a C-NMC crop is
#: 450 x 450) suggest the background or the stain was misread.
_MANY_CELLS = 20
_CROP_SIZED_AREA = 1_000_000


@dataclass(frozen=True)
class SegmentationParams:
    """Segmentation settings; stored in model bundles so prediction crops like training did.

    crop_size: side of the square crops (the paper: 299).
    erosion_size: side of the square erosion footprint in pixels (0 or 1: no erosion).
    min_area: components with fewer pixels (after erosion) are debris, not cells.
    largest_only: keep only the largest cell of each image (C-NMC images hold one cell).
    background: "auto" (decide per image), "dark" (cells on black, the paper's path) or
        "bright" (bright-field smears and crops: stained white cells on a pale background).
    """

    crop_size: int = 299
    erosion_size: int = 3
    min_area: int = 100
    largest_only: bool = False
    background: str = "auto"

    def __post_init__(self) -> None:
        for name in ("crop_size", "erosion_size", "min_area"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"SegmentationParams.{name} must be an integer, got {value!r}")
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be at least 1 pixel, got {self.crop_size}")
        if self.erosion_size < 0:
            raise ValueError(f"erosion_size must be 0 or more, got {self.erosion_size}")
        if self.min_area < 0:
            raise ValueError(f"min_area must be 0 or more, got {self.min_area}")
        if self.background not in BACKGROUND_MODES:
            raise ValueError(
                f"background must be one of {BACKGROUND_MODES}, got {self.background!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            key: (v if isinstance(v, (bool, str)) else int(v)) for key, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationParams:
        """Build from `to_dict` output; missing keys take defaults, unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown segmentation parameter(s) {unknown}; known: {sorted(known)} "
                "(was this saved by a newer napari-allbag?)"
            )
        return cls(**data)


@dataclass
class SegmentationResult:
    """Cells found in one image.

    labels: int32 HxW, each cell's filled convex hull holds its id (0 is background; where two
        hulls overlap the higher id wins). None when a caller asked not to keep it.
    table: column -> 1-D numpy array, one row per cell, columns `TABLE_COLUMNS`. Bounding boxes
        are of the hull, min inclusive and max exclusive; area counts the eroded component's
        pixels, hull_area the filled hull's; mean colour is over the hull. nucleus_area_rbc: the
        nucleus's area in red-cell areas where the bright-field path measured the red cells' size
        (NaN on the dark path and in crops whose scale was guessed); under one, the review flags
        say "small nucleus" (`inference.review`).
    crops: (N, S, S, 3) uint8 RGB, cell centred, black outside the hull.
    message: why nothing (or something odd) was found; "" when all is well.
    mode: the path that ran, "dark" or "bright" ("" where unknown).
    auto: True when `mode` was chosen from the image (`SegmentationParams.background` "auto").
    guessed: why the automatic choice was unsure ("" when it was sure, or not automatic).
    doubtful: why the cells found look wrong (one cell covering most of the image, far too
        many cells for the image's size); "" when they look plausible or there are none.
    """

    labels: np.ndarray | None
    table: dict[str, np.ndarray]
    crops: np.ndarray
    message: str = ""
    mode: str = ""
    auto: bool = False
    guessed: str = ""
    doubtful: str = ""

    @property
    def n_cells(self) -> int:
        return len(self.table["cell_id"])

    def __len__(self) -> int:
        return self.n_cells

    def __getstate__(self) -> dict:
        """Pickled (between worker processes) with the table's columns as lists: a C-NMC
        cell's nineteen one-row arrays took 39 us to pickle and 25 to load, as lists 8 and 11
        (about 0.04 of the 1.9 ms a cell costs two workers; docs/benchmarks.md)."""
        state = dict(self.__dict__)
        state["table"] = {name: (col.dtype.str, col.tolist()) for name, col in self.table.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        table = {}
        for name, (dtype, values) in state["table"].items():
            table[name] = np.empty(len(values), dtype)
            table[name][:] = values
        self.__dict__.update(state, table=table)


@dataclass
class FileSegmentation:
    """One file's outcome in `iter_segment_files`: a result, or an error saying why not."""

    path: Path
    result: SegmentationResult | None
    error: str | None = None


def empty_table(n: int = 0) -> dict[str, np.ndarray]:
    """A table with every column and `n` rows (zeros / empty strings; NaN: not measured)."""
    table = {name: np.zeros(n, dtype=_COLUMN_TYPES[name]) for name in TABLE_COLUMNS}
    for name in ("source", "mode", "keep_reason"):
        table[name] = np.full(n, "", dtype=object)
    table["nucleus_area_rbc"][:] = np.nan
    return table


def segment_image(
    image: np.ndarray, params: SegmentationParams | None = None, source: str = ""
) -> SegmentationResult:
    """Segment an HxWx3 uint8 RGB image (see the module docstring for the steps)."""
    return drive(segment_image_progress(image, params, source))


def segment_file(
    path: str | os.PathLike, params: SegmentationParams | None = None
) -> SegmentationResult:
    """Read an image file and segment it with the path `params.background` asks for (auto:
    the one the image needs, see `brightfield.segment_auto`); `ImageReadError` if unreadable."""
    from napari_allbag.segmentation.brightfield import segment_auto

    return segment_auto(read_image(path), params, source=str(path))


def segment_image_progress(
    image: np.ndarray, params: SegmentationParams | None = None, source: str = ""
) -> Generator[Progress, None, SegmentationResult]:
    """`segment_image` as a progress generator (stages, then cells), for the widget."""
    params = params or SegmentationParams()
    _check_image(image)
    height, width = image.shape[:2]
    stage = "segmenting"

    yield Progress(0, None, stage, "grey scale and Otsu threshold")
    mask = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    low, high, _, _ = cv2.minMaxLoc(mask)
    if low == high:
        what = "black" if high == 0 else f"uniform (every pixel has grey level {int(high)})"
        return _empty_result(
            (height, width),
            params,
            f"no cell found: the image is {what}, nothing stands out from the background",
        )
    cv2.threshold(mask, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU, dst=mask)

    yield Progress(0, None, stage, "erosion and connected components")
    if params.erosion_size > 1:
        footprint = np.ones((params.erosion_size, params.erosion_size), np.uint8)
        mask = cv2.erode(mask, footprint)  # not in place: parallel erosion reads its source
    _, labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    # One outer contour per 8-connected component (RETR_CCOMP puts components inside holes at
    # the top level too); cheaper than connectedComponentsWithStats on large images.
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    del mask
    outer = [c for c, h in zip(contours, hierarchy[0], strict=True) if h[3] < 0] if contours else []
    cells = _cells_from(outer, labels, params)
    if not cells:
        labels.fill(0)
        why = (
            "the foreground vanished under erosion; try a smaller erosion size"
            if not outer
            else f"{len(outer)} region(s), all smaller than min_area={params.min_area} pixels"
        )
        return _empty_result((height, width), params, f"no cell found: {why}", labels)

    labels.fill(0)  # from here on: the label image of the result
    table = empty_table(len(cells))
    crops = np.zeros((len(cells), params.crop_size, params.crop_size, 3), np.uint8)
    for row, cell in enumerate(cells):
        if row % max(1, len(cells) // 100) == 0:
            yield Progress(row, len(cells), stage, "cells")
        hull_mask = _filled_hull(cell)
        np.copyto(
            labels[cell.top : cell.bottom, cell.left : cell.right],
            row + 1,
            where=hull_mask.view(bool),
        )
        _fill_row(table, row, image, cell, hull_mask)
        crops[row] = _crop(image, hull_mask, cell.box, params.crop_size)
    table["cell_id"][:] = np.arange(1, len(cells) + 1)
    table["source"][:] = source
    table["mode"][:] = "dark"
    table["keep_reason"][:] = "component above grey Otsu"
    yield Progress(len(cells), len(cells), stage, "cells")
    oddity = _oddity_message(table, height * width)
    return SegmentationResult(labels, table, crops, oddity, mode="dark", doubtful=oddity)


#: Files a worker process segments per task: one C-NMC cell takes ~1.3 ms, so one file per task
#: spent a fifth of the time on round trips between processes, and 8 beat 4 by 3-5 %
#: (benchmarks/bench_segment.py --scaling). A worker holds at most `DEPTH` tasks, the rest go to
#: whichever finishes first, so a task of slow bright-field fields delays only its own worker.
FILES_PER_TASK = 8
#: What a worker segmenting files imports beyond its task's module (`segment_file` imports
#: `brightfield`, with scipy and scikit-image, when it first runs): the pool imports it once.
WORKER_PRELOAD = ("napari_allbag.segmentation.brightfield",)


def iter_segment_files(
    paths: Iterable[str | os.PathLike],
    params: SegmentationParams | None = None,
    workers: int | None = 1,
    keep_labels: bool = True,
    in_flight_per_worker: int = 4,
) -> Iterator[FileSegmentation]:
    """Segment files in order, `workers` processes at a time (1: in this process).

    At most ``workers * max(in_flight_per_worker, 2 * DEPTH * FILES_PER_TASK)`` files are being
    segmented or waiting to be consumed (files go to workers up to `FILES_PER_TASK` at a time), so
    thousands of files stream with bounded memory. Unreadable files give a
    FileSegmentation with `error` set instead of raising, as does a file whose worker process
    dies. `keep_labels=False` drops the label images (result.labels is None), which saves
    copying them between processes. Workers are spawned: a script calling this with
    ``workers > 1`` needs an ``if __name__ == "__main__":`` guard.
    """
    params = params or SegmentationParams()
    workers = default_workers() if workers is None else max(1, int(workers))
    yield from ordered_map(
        try_segment_file,
        (Path(p) for p in paths),
        (params, keep_labels),
        workers,
        max_in_flight=workers * max(in_flight_per_worker, 2 * DEPTH * FILES_PER_TASK),
        on_worker_death=lambda path, why: FileSegmentation(path, None, why),
        chunk_size=FILES_PER_TASK,
        preload=WORKER_PRELOAD,
    )


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


# --- per-cell steps ---------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        got = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise ValueError(
            f"segment_image expects an HxWx3 uint8 RGB array, got a {got} "
            "(convert with napari_allbag.io.images.to_rgb_uint8)"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image (shape {image.shape})")


@dataclass
class _Component:
    """One connected component of the eroded mask: its outer contour and its pixels."""

    contour: np.ndarray
    hull: np.ndarray  # convex hull of the contour, image coordinates
    top: int
    left: int
    bottom: int
    right: int
    pixels: np.ndarray  # uint8 0/1 mask over the bounding box
    area: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.bottom, self.right


def _cells_from(outer_contours, labels: np.ndarray, params: SegmentationParams) -> list[_Component]:
    """Components with area >= min_area, nested ones merged, in raster order of first pixel."""
    min_area = max(1, params.min_area)
    cells = []
    for contour in outer_contours:
        left, top, width, height = cv2.boundingRect(contour)
        if width * height < min_area:
            continue
        col, row = contour[0, 0]  # the border's start: the component's first pixel in raster order
        component = labels[row, col]
        pixels = (labels[top : top + height, left : left + width] == component).view(np.uint8)
        area = cv2.countNonZero(pixels)
        if area >= min_area:
            cells.append(
                _Component(
                    contour,
                    cv2.convexHull(contour),
                    top,
                    left,
                    top + height,
                    left + width,
                    pixels,
                    area,
                )
            )
    cells = _merge_nested(cells)
    if params.largest_only and cells:
        cells = [max(cells, key=lambda cell: cell.area)]
    cells.sort(key=lambda cell: (cell.top, int(cell.contour[0, 0, 0])))
    return cells


def _merge_nested(cells: list[_Component]) -> list[_Component]:
    """Fold each component lying inside a bigger one's convex hull into that one.

    A fragment inside a cell's hull (a nucleus lobe cut off by a dark ring, a speck) belongs to
    that cell: it is inside its crop anyway, and must not become a cell of its own.
    """
    if len(cells) < 2:
        return cells
    cells = sorted(cells, key=lambda cell: -cell.area)
    boxes = np.array([cell.box for cell in cells])
    kept: list[int] = []
    for j, inner in enumerate(cells):
        top, left, bottom, right = boxes[j]
        kept_boxes = boxes[kept]
        around = (
            np.flatnonzero(
                (kept_boxes[:, 0] <= top)
                & (kept_boxes[:, 1] <= left)
                & (kept_boxes[:, 2] >= bottom)
                & (kept_boxes[:, 3] >= right)
            )
            if kept
            else []
        )
        host = next((kept[k] for k in around if _inside(inner.hull, cells[kept[k]].hull)), None)
        if host is None:
            kept.append(j)
            continue
        outer = cells[host]
        region = outer.pixels[
            top - outer.top : bottom - outer.top, left - outer.left : right - outer.left
        ]
        region |= inner.pixels
        outer.area += inner.area
    return [cells[j] for j in kept]


def _inside(points: np.ndarray, hull: np.ndarray) -> bool:
    return all(
        cv2.pointPolygonTest(hull, (float(x), float(y)), False) >= 0 for x, y in points[:, 0]
    )


def _filled_hull(cell: _Component) -> np.ndarray:
    """The cell's convex hull filled, as a 0/1 mask over its bounding box."""
    hull_mask = np.zeros_like(cell.pixels)
    cv2.fillPoly(hull_mask, [cell.hull - np.array([cell.left, cell.top], np.int32)], 1)
    hull_mask |= cell.pixels  # a hull holds its component, even when degenerate (a point, a line)
    return hull_mask


def _fill_row(table, row: int, image: np.ndarray, cell: _Component, hull_mask) -> None:
    top, left, bottom, right = cell.box
    moments = cv2.moments(cell.pixels, binaryImage=True)
    hull_area = cv2.countNonZero(hull_mask)
    mean_r, mean_g, mean_b, _ = cv2.mean(image[top:bottom, left:right], mask=hull_mask)
    height, width = image.shape[:2]
    table["centroid_row"][row] = top + moments["m01"] / moments["m00"]
    table["centroid_col"][row] = left + moments["m10"] / moments["m00"]
    table["bbox_min_row"][row] = top
    table["bbox_min_col"][row] = left
    table["bbox_max_row"][row] = bottom
    table["bbox_max_col"][row] = right
    table["area"][row] = cell.area
    table["hull_area"][row] = hull_area
    table["solidity"][row] = cell.area / hull_area
    table["equivalent_diameter"][row] = math.sqrt(4.0 * cell.area / math.pi)
    table["mean_r"][row] = mean_r
    table["mean_g"][row] = mean_g
    table["mean_b"][row] = mean_b
    table["touches_border"][row] = top == 0 or left == 0 or bottom == height or right == width


def _crop(image: np.ndarray, hull_mask: np.ndarray, box, crop_size: int) -> np.ndarray:
    """Square patch centred on the box, black outside the hull and the image, resized."""
    top, left, bottom, right = box
    height, width = bottom - top, right - left
    side = max(height, width)
    square = np.zeros((side, side, 3), np.uint8)
    row0, col0 = (side - height) // 2, (side - width) // 2
    patch = image[top:bottom, left:right]
    square[row0 : row0 + height, col0 : col0 + width] = cv2.bitwise_and(
        patch, patch, mask=hull_mask
    )
    if side == crop_size:
        return square
    interpolation = cv2.INTER_AREA if side > crop_size else cv2.INTER_LINEAR
    return cv2.resize(square, (crop_size, crop_size), interpolation=interpolation)


def _oddity_message(table: dict[str, np.ndarray], image_area: int) -> str:
    """Plain words when the cells look wrong (a bright background taken as a cell, or a
    single-cell image broken into many pieces); "" when they look plausible."""
    biggest = int(table["hull_area"].max())
    if biggest > _MOST_OF_IMAGE * image_area:
        return (
            "one cell covers most of the image: this segmentation expects cells on a dark "
            "background; is the background bright?"
        )
    n_cells = len(table["cell_id"])
    if n_cells > _MANY_CELLS and image_area <= _CROP_SIZED_AREA:
        return (
            f"{n_cells} cells in an image the size of a single-cell crop: is the background "
            "really dark (a bright-field image needs background bright)?"
        )
    return ""


def _empty_result(shape, params: SegmentationParams, message: str, labels=None):
    if labels is None:
        labels = np.zeros(shape, np.int32)
    crops = np.zeros((0, params.crop_size, params.crop_size, 3), np.uint8)
    return SegmentationResult(labels, empty_table(0), crops, message)


# --- files --------------------------------------------------------------------------------------


def try_segment_file(
    path: Path, params: SegmentationParams, keep_labels: bool = True
) -> FileSegmentation:
    """Segment one file; a failure becomes `FileSegmentation.error` instead of an exception."""
    try:
        result = segment_file(path, params)
    except ImageReadError as error:
        return FileSegmentation(path, None, error.reason)
    except MemoryError:
        return FileSegmentation(path, None, "out of memory while segmenting this image")
    except Exception as error:  # noqa: BLE001 - one bad file must not stop thousands
        return FileSegmentation(path, None, f"segmentation failed: {type(error).__name__}: {error}")
    if not keep_labels:
        result.labels = None
    return FileSegmentation(path, result, None)
