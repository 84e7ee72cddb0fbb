"""Crops of cells given as a label image, the way the segmentation makes them.

Used when a "cells" Labels layer (possibly edited by hand) must be classified but its crops are
missing or were made at another size: each cell's mask (its label, the filled convex hull) is cut
out of the image as a square centred on the cell's bounding box, black outside the mask and the
image (pad, never stretch), resized to `crop_size`.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage


def crops_from_labels(
    image: np.ndarray, labels: np.ndarray, cell_ids: Sequence[int], crop_size: int
) -> np.ndarray:
    """(N, crop_size, crop_size, 3) uint8 crops of `cell_ids` in `labels` over RGB `image`.

    A cell id absent from `labels` gives an all-black crop (the cell was painted out).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"labels {labels.shape} and image {image.shape[:2]} differ in size: they must cover "
            "the same pixels"
        )
    ids = [int(i) for i in cell_ids]
    crops = np.zeros((len(ids), crop_size, crop_size, 3), np.uint8)
    if not ids:
        return crops
    labels = np.asarray(labels)
    boxes = ndimage.find_objects(labels.astype(np.int64, copy=False), max_label=max(ids))
    for row, cell_id in enumerate(ids):
        box = boxes[cell_id - 1] if 0 < cell_id <= len(boxes) else None
        if box is None:
            continue
        mask = (labels[box] == cell_id).view(np.uint8)
        crops[row] = _square_crop(image[box], mask, crop_size)
    return crops


def _square_crop(patch: np.ndarray, mask: np.ndarray, crop_size: int) -> np.ndarray:
    height, width = mask.shape
    side = max(height, width)
    square = np.zeros((side, side, 3), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = cv2.bitwise_and(patch, patch, mask=mask)
    if side == crop_size:
        return square
    interpolation = cv2.INTER_AREA if side > crop_size else cv2.INTER_LINEAR
    return cv2.resize(square, (crop_size, crop_size), interpolation=interpolation)
