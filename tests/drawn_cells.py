"""Images of cells drawn with OpenCV for segmentation tests: filled, textured ellipses on black.

Other test modules import this: `from tests.drawn_cells import draw_cells` (tests/ is a package;
pytest's default rootdir-based import mode puts the repository root on the import path).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DrawnCell:
    """Where a cell was drawn: centre (row, col) and half-axes (rows, cols) of its ellipse."""

    center: tuple[int, int]
    axes: tuple[int, int]


def draw_cells(shape: tuple[int, int], cells: list[DrawnCell], seed: int = 0) -> np.ndarray:
    """An RGB uint8 image: each cell a pale ellipse with a darker nucleus and texture, on black."""
    rng = np.random.default_rng(seed)
    image = np.zeros((*shape, 3), np.uint8)
    for cell in cells:
        row, col = cell.center
        half_rows, half_cols = cell.axes
        cytoplasm = tuple(int(v) for v in rng.integers(160, 230, 3))
        nucleus = tuple(int(v) for v in rng.integers(100, 150, 3))
        cv2.ellipse(image, (col, row), (half_cols, half_rows), 0, 0, 360, cytoplasm, -1)
        cv2.ellipse(
            image, (col, row), (half_cols * 2 // 3, half_rows * 2 // 3), 0, 0, 360, nucleus, -1
        )
    noise = rng.integers(0, 12, image.shape, dtype=np.uint8)
    return np.where(image > 0, cv2.subtract(image, noise), 0).astype(np.uint8)


#: A 300 x 400 field: three separate cells and one cut by the right border.
FIELD_CELLS = [
    DrawnCell((60, 70), (40, 30)),
    DrawnCell((90, 250), (30, 45)),
    DrawnCell((220, 120), (35, 35)),
    DrawnCell((200, 385), (40, 30)),
]
FIELD_SHAPE = (300, 400)


def field() -> np.ndarray:
    return draw_cells(FIELD_SHAPE, FIELD_CELLS)


def single_cell(size: int = 450, seed: int = 0) -> np.ndarray:
    """A C-NMC-like image: one cell in the middle of a `size` x `size` black square."""
    half = size // 2
    return draw_cells((size, size), [DrawnCell((half, half), (size // 5, size // 6))], seed)
