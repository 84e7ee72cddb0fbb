"""The same segmentation written plainly with scikit-image: the reference for tests and benchmarks.

Steps as in `napari_allbag.segmentation.dark` (see its docstring), one library call each:
``rgb2gray`` -> ``threshold_otsu`` -> ``erosion`` with the same square footprint (an even side is
anchored at ``side // 2`` as OpenCV does) -> ``label`` (8-connected), components inside a bigger
one's hull merged into it -> ``convex_hull_image`` per cell -> centred square crop -> ``resize``. Differences that remain are in the libraries: grey
weights (scikit-image uses BT.709, OpenCV BT.601) and how a hull is rasterised.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.morphology import convex_hull_image, erosion
from skimage.transform import resize

from napari_allbag.segmentation.dark import (
    SegmentationParams,
    SegmentationResult,
    empty_table,
)


def segment_image_reference(
    image: np.ndarray, params: SegmentationParams | None = None, source: str = ""
) -> SegmentationResult:
    """Segment an HxWx3 uint8 RGB image with scikit-image (slow, obviously right)."""
    params = params or SegmentationParams()
    height, width = image.shape[:2]
    grey = rgb2gray(image)
    if grey.min() == grey.max():
        return _empty(image, params, "no cell found: the image is uniform")
    foreground = grey > threshold_otsu(grey)
    if params.erosion_size > 1:
        foreground = erosion(foreground, _footprint(params.erosion_size))
    components = label(foreground, connectivity=2)
    cells = [
        (components == region.label, region.area)
        for region in regionprops(components)
        if region.area >= max(1, params.min_area)
    ]
    cells = _merge_nested(cells)
    if params.largest_only and cells:
        cells = [max(cells, key=lambda cell: cell[1].sum())]
    if not cells:
        return _empty(image, params, "no cell found")

    labels = np.zeros((height, width), np.int32)
    table = empty_table(len(cells))
    crops = np.zeros((len(cells), params.crop_size, params.crop_size, 3), np.uint8)
    for row, (hull, pixels) in enumerate(cells):
        labels[hull] = row + 1
        area = int(pixels.sum())
        rows, cols = np.nonzero(hull)
        top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        pixel_rows, pixel_cols = np.nonzero(pixels)
        table["centroid_row"][row] = pixel_rows.mean()
        table["centroid_col"][row] = pixel_cols.mean()
        table["bbox_min_row"][row], table["bbox_min_col"][row] = top, left
        table["bbox_max_row"][row], table["bbox_max_col"][row] = bottom, right
        table["area"][row] = area
        table["hull_area"][row] = hull.sum()
        table["solidity"][row] = area / hull.sum()
        table["equivalent_diameter"][row] = np.sqrt(4 * area / np.pi)
        table["mean_r"][row], table["mean_g"][row], table["mean_b"][row] = image[hull].mean(axis=0)
        table["touches_border"][row] = top == 0 or left == 0 or bottom == height or right == width
        crops[row] = _crop(image, hull, (top, left, bottom, right), params.crop_size)
    table["cell_id"][:] = np.arange(1, len(cells) + 1)
    table["source"][:] = source
    return SegmentationResult(labels, table, crops, "")


def _merge_nested(components):
    """(component mask, area) in label order -> (hull, pixels) with nested components merged.

    A component inside a bigger one's convex hull is part of that cell, as in the OpenCV version.
    """
    by_size = sorted(range(len(components)), key=lambda i: -components[i][1])
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in by_size:
        pixels = components[i][0]
        host = next((k for k, (hull, _) in kept.items() if hull[pixels].all()), None)
        if host is None:
            kept[i] = (convex_hull_image(pixels), pixels)
        else:
            kept[host] = (kept[host][0], kept[host][1] | pixels)
    return [kept[i] for i in sorted(kept)]


def _footprint(side: int) -> np.ndarray:
    """Square footprint of `side`, anchored like OpenCV's (centre at side // 2)."""
    odd = 2 * (side // 2) + 1
    footprint = np.zeros((odd, odd), bool)
    footprint[:side, :side] = True
    return footprint


def _crop(image, hull, box, crop_size) -> np.ndarray:
    top, left, bottom, right = box
    side = max(bottom - top, right - left)
    square = np.zeros((side, side, 3), np.uint8)
    row0, col0 = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    masked = image[top:bottom, left:right] * hull[top:bottom, left:right, None]
    square[row0 : row0 + bottom - top, col0 : col0 + right - left] = masked
    resized = resize(
        square, (crop_size, crop_size), order=1, anti_aliasing=side > crop_size, preserve_range=True
    )
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _empty(image, params, message) -> SegmentationResult:
    crops = np.zeros((0, params.crop_size, params.crop_size, 3), np.uint8)
    return SegmentationResult(np.zeros(image.shape[:2], np.int32), empty_table(0), crops, message)
