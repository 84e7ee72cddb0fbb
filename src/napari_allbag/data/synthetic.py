"""Deterministic C-NMC-like synthetic cells, fields of cells and annotated folders.

The C-NMC challenge images hold one stain-normalised white blood cell on a pure black background
(450x450 RGB). The generator draws cells like them, in the two classes the way the haematology
literature tells them apart, so that the whole pipeline can be tried and tested without the data:

* ALL (lymphoblasts): larger and rounder, a nucleus filling almost the whole cell (high
  nucleus:cytoplasm ratio), fine homogeneous chromatin, often one to three pale nucleoli.
* HEM (normal cells): smaller and more irregular, a visible rim of paler cytoplasm, denser and
  coarser (clumped) chromatin.

Within each class cells vary in size, shape, orientation, texture and shade; each subject (patient)
has its own stain shift (`StainShift.for_subject`), so that splitting by subject matters.
Everything is drawn from `numpy.random.default_rng` seeded by the arguments: same arguments, same
bytes. Geometry is defined at 450 px and scaled, so `size=128` gives the same cell, smaller.

`python -m napari_allbag.data.synthetic --write-samples sample_data/` regenerates the shipped samples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from napari_allbag.io.atomic import write_bytes_atomic

#: Geometry of the generator is defined at this image size and scaled to the requested one.
REFERENCE_SIZE = 450
#: Extensions `write_annotated_folder` can write.
WRITE_EXTENSIONS = (".bmp", ".png", ".tif", ".tiff")
#: C-NMC file names: UID_<subject>_<image>_<cell>_<all|hem>.<ext>
CNMC_NAME = re.compile(r"^UID_(?P<subject>H?\d+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<label>all|hem)\.")

#: Seeds and names of the shipped samples (sample_data/); data.samples regenerates them from these.
SAMPLE_ALL_CELL = ("single_all_cell.png", "all", 7)
SAMPLE_HEM_CELL = ("single_hem_cell.png", "hem", 11)
SAMPLE_FIELD = ("field_of_cells.png", 2019)
SAMPLE_FIELD_TRUTH = "field_of_cells.json"
SAMPLE_FIELD_KWARGS = {"n_cells": 8, "shape": (1024, 1024), "n_debris": 6}

# Stain colours (RGB) at density 0 (light) and 1 (dark); mixed linearly by the density map.
# Chosen so that typical cells have the real sample's mean colour, about (66, 28, 77).
_NUCLEUS_LIGHT = np.array([98.0, 45.0, 96.0], dtype=np.float32)
_NUCLEUS_DARK = np.array([40.0, 14.0, 64.0], dtype=np.float32)
_CYTOPLASM_LIGHT = np.array([94.0, 54.0, 106.0], dtype=np.float32)
_CYTOPLASM_DARK = np.array([42.0, 20.0, 78.0], dtype=np.float32)
_LABEL_CODE = {"hem": 0, "all": 1}


@dataclass(frozen=True)
class StainShift:
    """A subject's staining: per-channel RGB gain and a shift of the stain density."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    density: float = 0.0

    @classmethod
    def for_subject(cls, subject_seed: int) -> StainShift:
        """The stain shift of one subject (patient), drawn from its seed."""
        rng = np.random.default_rng([int(subject_seed), 7_919])
        brightness = rng.normal(0.0, 0.05)
        channels = rng.normal(0.0, 0.05, size=3)
        gain = tuple(float(np.clip(1.0 + brightness + c, 0.85, 1.2)) for c in channels)
        return cls(gain=gain, density=float(np.clip(rng.normal(0.0, 0.03), -0.06, 0.06)))


@dataclass(frozen=True)
class FieldCell:
    """Ground truth of one cell in a generated field: class, centroid (row, col), box, area."""

    label: str
    center: tuple[float, float]
    bbox: tuple[int, int, int, int]  # (row0, col0, row1, col1), end exclusive
    area: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _ClassLook:
    """How a class is drawn (lengths in pixels at REFERENCE_SIZE)."""

    radius: tuple[float, float, float, float]  # mean, sd, min, max
    ellipticity: tuple[float, float]  # uniform range of the elongation
    harmonics_sd: float  # irregularity of the outline
    nucleus_scale: tuple[float, float]  # nucleus size relative to the cell (N:C ratio)
    nucleus_density: tuple[float, float]
    texture_px: tuple[float, float]  # feature size of the chromatin pattern
    texture_amplitude: tuple[float, float]
    clumping: float  # > 0 turns the pattern into dark clumps with pale gaps
    nucleoli: tuple[int, int]  # min, max count


_LOOKS = {
    "all": _ClassLook(
        radius=(112.0, 8.0, 94.0, 130.0),
        ellipticity=(0.0, 0.07),
        harmonics_sd=0.010,
        nucleus_scale=(0.90, 0.96),
        nucleus_density=(0.42, 0.54),
        texture_px=(2.5, 4.0),
        texture_amplitude=(0.05, 0.08),
        clumping=0.0,
        nucleoli=(1, 3),
    ),
    "hem": _ClassLook(
        radius=(94.0, 8.0, 74.0, 114.0),
        ellipticity=(0.04, 0.16),
        harmonics_sd=0.045,
        nucleus_scale=(0.70, 0.82),
        nucleus_density=(0.56, 0.68),
        texture_px=(9.0, 14.0),
        texture_amplitude=(0.13, 0.19),
        clumping=1.6,
        nucleoli=(0, 0),
    ),
}


def _check_label(label: str) -> str:
    key = str(label).lower()
    if key not in _LABEL_CODE:
        raise ValueError(f"label must be 'all' or 'hem', not {label!r}")
    return key


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], feature_px: float
) -> np.ndarray:
    """Zero-mean, unit-sd noise whose blobs are about `feature_px` wide (float32)."""
    height, width = shape
    feature_px = max(float(feature_px), 1.0)
    grid = rng.standard_normal(
        (int(math.ceil(height / feature_px)) + 3, int(math.ceil(width / feature_px)) + 3),
        dtype=np.float32,
    )
    big = cv2.resize(
        grid,
        (int(round(grid.shape[1] * feature_px)), int(round(grid.shape[0] * feature_px))),
        interpolation=cv2.INTER_CUBIC,
    )
    start = int(feature_px)  # skip the first grid cell, where cubic interpolation is one-sided
    noise = big[start : start + height, start : start + width]
    sd = float(noise.std())
    return (noise - float(noise.mean())) / (sd if sd > 1e-6 else 1.0)


def _outline(
    rng: np.random.Generator, radius: float, ellipticity: float, harmonics_sd: float, n: int = 180
) -> tuple[np.ndarray, np.ndarray]:
    """(angles, radii) of an ellipse-like closed curve with random wobbles (harmonics 3..8)."""
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    axis = rng.uniform(0.0, np.pi)
    r = 1.0 + ellipticity * np.cos(2.0 * (theta - axis))
    for k in range(3, 9):
        r += rng.normal(0.0, harmonics_sd / math.sqrt(k - 2)) * np.cos(
            k * theta + rng.uniform(0.0, 2.0 * np.pi)
        )
    return theta, radius * r


def _fill(shape: tuple[int, int], centre: tuple[float, float], theta, r) -> np.ndarray:
    """Filled polygon mask (uint8 0/1) of a polar outline around centre (x, y)."""
    points = np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=1)
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask


@dataclass(frozen=True)
class _CellGeometry:
    """Where one cell lies: its window in the image, outline, and mask within that window."""

    radius: float
    theta: np.ndarray
    r_cell: np.ndarray
    centre: tuple[float, float]  # in window coordinates
    window: tuple[int, int, int, int]  # x0, y0, x1, y1 in the image
    cell: np.ndarray  # uint8 mask of the window

    @property
    def shape(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.window
        return (y1 - y0, x1 - x0)


def _draw_cell(
    label: str, seed: int, size: int, shift: StainShift | None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one cell: (RGB uint8 image, bool mask)."""
    look = _LOOKS[label]
    # The stream depends on seed and class only (the 450 is a fixed salt), not on `size`, so a
    # smaller image shows the same cell.
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _LABEL_CODE[label], 450])
    scale = size / REFERENCE_SIZE
    geometry = _cell_geometry(rng, look, size, scale)
    nucleus_scale, n_centre, nucleus_soft = _nucleus(rng, look, geometry, scale)
    densities = _stain_densities(rng, look, geometry, (nucleus_scale, n_centre), scale, shift)
    rgb = _stain_colours(rng, nucleus_soft, densities, scale, shift)
    return _place_in_image(geometry, rgb, size)


def _cell_geometry(
    rng: np.random.Generator, look: _ClassLook, size: int, scale: float
) -> _CellGeometry:
    """Outline of the cell, a random offset from the centre, and the window around it."""
    mean, sd, low, high = look.radius
    radius = float(np.clip(rng.normal(mean, sd), low, high)) * scale
    theta, r_cell = _outline(rng, radius, rng.uniform(*look.ellipticity), look.harmonics_sd)
    reach = float(r_cell.max())
    slack = max(size / 2.0 - reach - 2.0 * scale - 1.0, 0.0)
    offset = rng.uniform(-1.0, 1.0, size=2) * min(slack, 25.0 * scale)
    centre = (size / 2.0 + offset[0], size / 2.0 + offset[1])
    # Work only in the window around the cell: everything outside stays black.
    margin = reach + 3.0
    x0, y0 = max(int(centre[0] - margin), 0), max(int(centre[1] - margin), 0)
    x1, y1 = min(int(centre[0] + margin) + 2, size), min(int(centre[1] + margin) + 2, size)
    shape = (y1 - y0, x1 - x0)
    centre = (centre[0] - x0, centre[1] - y0)
    cell = _fill(shape, centre, theta, r_cell)
    return _CellGeometry(radius, theta, r_cell, centre, (x0, y0, x1, y1), cell)


def _nucleus(
    rng: np.random.Generator, look: _ClassLook, geometry: _CellGeometry, scale: float
) -> tuple[float, tuple[float, float], np.ndarray]:
    """The nucleus: smaller than the cell, off-centre where cytoplasm shows, softly edged."""
    centre, shape = geometry.centre, geometry.shape
    nucleus_scale = rng.uniform(*look.nucleus_scale)
    drift = (1.0 - nucleus_scale) * geometry.radius * rng.uniform(0.2, 0.6)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    n_centre = (centre[0] + drift * math.cos(angle), centre[1] + drift * math.sin(angle))
    _, r_own = _outline(rng, 1.0, 0.0, look.harmonics_sd * 0.8)
    r_nucleus = geometry.r_cell * nucleus_scale * r_own
    nucleus = _fill(shape, n_centre, geometry.theta, r_nucleus) & geometry.cell
    nucleus_soft = cv2.GaussianBlur(nucleus.astype(np.float32), (0, 0), max(1.5 * scale, 0.5))
    return nucleus_scale, n_centre, nucleus_soft


def _stain_densities(
    rng: np.random.Generator,
    look: _ClassLook,
    geometry: _CellGeometry,
    nucleus: tuple[float, tuple[float, float]],
    scale: float,
    shift: StainShift | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stain density (0 light .. 1 dark): nucleus with chromatin and nucleoli, cytoplasm, rim."""
    shape = geometry.shape
    texture = _smooth_noise(rng, shape, rng.uniform(*look.texture_px) * scale)
    if look.clumping > 0:
        texture = np.tanh(look.clumping * texture)
    texture *= rng.uniform(*look.texture_amplitude)
    texture += 0.05 * _smooth_noise(rng, shape, 30.0 * scale)
    density_shift = rng.normal(0.0, 0.025) + (shift.density if shift else 0.0)
    nucleus_density = rng.uniform(*look.nucleus_density) + density_shift + texture
    nucleus_density = _add_nucleoli(rng, look, geometry, nucleus, nucleus_density, scale)
    cyto_density = (
        rng.uniform(0.18, 0.3) + density_shift + 0.05 * _smooth_noise(rng, shape, 6.0 * scale)
    )
    edge = cv2.distanceTransform(geometry.cell, cv2.DIST_L2, 3)
    rim = 0.14 * np.exp(-edge / max(3.0 * scale, 0.7))
    return nucleus_density, cyto_density, rim


def _add_nucleoli(
    rng: np.random.Generator,
    look: _ClassLook,
    geometry: _CellGeometry,
    nucleus: tuple[float, tuple[float, float]],
    nucleus_density: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Lighten the nucleus density with the nucleoli (pale round spots)."""
    nucleus_scale, n_centre = nucleus
    lo, hi = look.nucleoli
    for _ in range(int(rng.integers(lo, hi + 1))):
        spot_r = rng.uniform(7.0, 13.0) * scale
        where = rng.uniform(0.0, 2.0 * np.pi)
        dist = rng.uniform(0.0, 0.5) * geometry.radius * nucleus_scale
        spot = np.zeros(geometry.shape, dtype=np.float32)
        cv2.circle(
            spot,
            (int(n_centre[0] + dist * math.cos(where)), int(n_centre[1] + dist * math.sin(where))),
            max(int(round(spot_r)), 1),
            1.0,
            -1,
        )
        nucleus_density -= 0.2 * cv2.GaussianBlur(spot, (0, 0), max(spot_r / 3.0, 0.5))
    return nucleus_density


def _stain_colours(
    rng: np.random.Generator,
    nucleus_soft: np.ndarray,
    densities: tuple[np.ndarray, np.ndarray, np.ndarray],
    scale: float,
    shift: StainShift | None,
) -> np.ndarray:
    """Blend nucleus and cytoplasm colours by density, then stain gain, blur and sensor noise."""
    nucleus_density, cyto_density, rim = densities
    w = nucleus_soft[..., None]
    # Capped below full density: the darkest chromatin stays well above the black background, as
    # in the real cells, so an Otsu threshold keeps every cell in one piece.
    d_nuc = np.clip(nucleus_density + rim, 0.0, 0.8)[..., None]
    d_cyt = np.clip(cyto_density + rim, 0.0, 1.0)[..., None]
    rgb = w * (_NUCLEUS_LIGHT + (_NUCLEUS_DARK - _NUCLEUS_LIGHT) * d_nuc) + (1.0 - w) * (
        _CYTOPLASM_LIGHT + (_CYTOPLASM_DARK - _CYTOPLASM_LIGHT) * d_cyt
    )
    if shift is not None:
        rgb *= np.asarray(shift.gain, dtype=np.float32)
    rgb *= np.float32(1.0 + rng.normal(0.0, 0.03))
    rgb = cv2.GaussianBlur(rgb, (0, 0), max(0.8 * scale, 0.3))
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(1.5)
    return rgb


def _place_in_image(
    geometry: _CellGeometry, rgb: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pure black outside the cell, as in the challenge data; never black inside it."""
    x0, y0, x1, y1 = geometry.window
    inside = geometry.cell.astype(bool)
    window = np.zeros((*geometry.shape, 3), dtype=np.uint8)
    window[inside] = np.clip(rgb[inside], 8.0, 255.0).astype(np.uint8)
    image = np.zeros((size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    image[y0:y1, x0:x1] = window
    mask[y0:y1, x0:x1] = inside
    return image, mask


def make_cell(
    label: str,
    seed: int,
    size: int = REFERENCE_SIZE,
    subject_shift: StainShift | Sequence[float] | None = None,
) -> np.ndarray:
    """One synthetic C-NMC-like cell, `size` x `size` RGB uint8, stained cell on pure black.

    `label` is 'all' or 'hem'; `seed` fixes every random choice (same arguments, same bytes);
    `subject_shift` is the subject's `StainShift` (or an RGB gain triple); None leaves the stain
    unshifted.
    """
    key = _check_label(label)
    if int(size) < 16:
        raise ValueError(f"size must be at least 16 pixels, not {size}")
    if subject_shift is not None and not isinstance(subject_shift, StainShift):
        gain = tuple(float(g) for g in subject_shift)
        if len(gain) != 3:
            raise ValueError(f"subject_shift must be a StainShift or 3 RGB gains, not {gain}")
        subject_shift = StainShift(gain=gain)
    image, _ = _draw_cell(key, seed, int(size), subject_shift)
    return image


def make_field(
    seed: int = 0,
    n_cells: int = 8,
    shape: tuple[int, int] = (1024, 1024),
    cell_size: int | None = None,
    n_debris: int = 0,
    gap: int = 12,
) -> tuple[np.ndarray, list[FieldCell]]:
    """A field of separated cells (about half ALL, half HEM) on a dark background.

    Returns (RGB uint8 image of `shape`, truth): one `FieldCell` per cell with its class, the
    centroid (row, col) and box of its pixels. Cells never touch each other nor the border (at least
    `gap` pixels apart); `n_debris` small specks (a few pixels, not in the truth) test area filters.
    `cell_size` is the canvas each cell is drawn on (default a quarter of the shorter side).
    """
    height, width = int(shape[0]), int(shape[1])
    cell_size = int(cell_size or max(min(height, width) // 4, 32))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1_024])
    background = np.clip(3.0 + 2.0 * _smooth_noise(rng, (height, width), 200.0), 0.0, 7.0)
    image = np.repeat(background.astype(np.uint8)[..., None], 3, axis=2)
    occupied = np.zeros((height, width), dtype=bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1, 2 * gap + 1))

    labels = ["all" if i % 2 == 0 else "hem" for i in range(n_cells)]
    labels = [labels[i] for i in rng.permutation(n_cells)]
    truth: list[FieldCell] = []
    for label in labels:
        cell_seed = int(rng.integers(0, 2**31))
        shift = StainShift.for_subject(int(rng.integers(0, 2**31)))
        cell, mask = _draw_cell(label, cell_seed, cell_size, shift)
        rows, cols = np.nonzero(mask)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        cell, mask = cell[r0:r1, c0:c1], mask[r0:r1, c0:c1]
        h, w = mask.shape
        if h + 2 * gap > height or w + 2 * gap > width:
            raise ValueError(f"a cell of {h}x{w} px does not fit a field of {height}x{width}")
        padded = np.zeros((h + 2 * gap, w + 2 * gap), dtype=np.uint8)
        padded[gap : gap + h, gap : gap + w] = mask
        keep_clear = cv2.dilate(padded, kernel) > 0  # the cell grown by `gap`
        for _attempt in range(2000):
            top = int(rng.integers(gap, height - h - gap + 1))
            left = int(rng.integers(gap, width - w - gap + 1))
            window = occupied[top - gap : top + h + gap, left - gap : left + w + gap]
            if not (window & keep_clear).any():
                break
        else:
            raise ValueError(
                f"cannot place {n_cells} separated cells in a {height}x{width} field; "
                "ask for fewer cells, smaller cell_size or a larger shape"
            )
        region = image[top : top + h, left : left + w]
        region[mask] = cell[mask]
        occupied[top : top + h, left : left + w] |= mask
        mask_rows, mask_cols = np.nonzero(mask)
        truth.append(
            FieldCell(
                label=label,
                center=(float(mask_rows.mean() + top), float(mask_cols.mean() + left)),
                bbox=(top, left, top + h, left + w),
                area=int(mask.sum()),
            )
        )

    speck_colour = (_NUCLEUS_LIGHT + _NUCLEUS_DARK) / 2.0
    placed, attempts = 0, 0
    while placed < n_debris and attempts < 100 * max(n_debris, 1):
        attempts += 1
        radius = int(rng.integers(1, 4))
        y = int(rng.integers(gap, height - gap))
        x = int(rng.integers(gap, width - gap))
        if occupied[max(y - gap, 0) : y + gap + 1, max(x - gap, 0) : x + gap + 1].any():
            continue
        cv2.circle(image, (x, y), radius, tuple(float(c) for c in speck_colour), -1)
        occupied[y - radius : y + radius + 1, x - radius : x + radius + 1] = True
        placed += 1
    return image, truth


def _write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Encode `image` (RGB) by the path's extension and move it into place in one step."""
    ok, encoded = cv2.imencode(path.suffix.lower(), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path} as {path.suffix}")
    write_bytes_atomic(path, encoded.tobytes(), mode=None, sync=False)


def _subject_names(label: str, n_subjects: int) -> list[str]:
    return [f"H{i}" if label == "hem" else str(i) for i in range(1, n_subjects + 1)]


def plan_annotated_folder(
    n_all: int, n_hem: int, n_subjects: int = 3, seed: int = 0, ext: str = ".bmp"
) -> list[tuple[str, str, str, int, StainShift]]:
    """What `write_annotated_folder` writes: (relative path, label, subject, cell seed, stain)."""
    if n_all < 0 or n_hem < 0:
        raise ValueError(f"cell counts must not be negative (n_all={n_all}, n_hem={n_hem})")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be at least 1, not {n_subjects}")
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(f"ext must be one of {', '.join(WRITE_EXTENSIONS)}, not {ext!r}")
    plan = []
    for label, count in (("all", n_all), ("hem", n_hem)):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _LABEL_CODE[label], 77])
        subjects = _subject_names(label, n_subjects)
        stains = [
            StainShift.for_subject(int(s))
            for s in np.random.default_rng(
                [int(seed) & 0xFFFFFFFF, _LABEL_CODE[label], 78]
            ).integers(0, 2**31, size=n_subjects)
        ]
        image_no = [0] * n_subjects
        cell_no = [0] * n_subjects
        for index in range(count):
            s = index % n_subjects
            # Like C-NMC: most images give one cell, some give a second one.
            if image_no[s] == 0 or cell_no[s] >= 2 or rng.random() > 0.25:
                image_no[s] += 1
                cell_no[s] = 1
            else:
                cell_no[s] += 1
            name = f"UID_{subjects[s]}_{image_no[s]}_{cell_no[s]}_{label}{ext}"
            plan.append(
                (f"{label}/{name}", label, subjects[s], int(rng.integers(0, 2**31)), stains[s])
            )
    return plan


def write_annotated_folder(
    out_dir: str | os.PathLike,
    n_all: int,
    n_hem: int,
    n_subjects: int = 3,
    seed: int = 0,
    size: int = REFERENCE_SIZE,
    ext: str = ".bmp",
    overwrite: bool = False,
) -> list[Path]:
    """Write a C-NMC-like annotated folder: `out_dir/all/UID_<s>_<i>_<c>_all.bmp` and `hem/...`.

    ALL subjects are named 1, 2, ...; HEM subjects H1, H2, ...; cells are shared round-robin among
    `n_subjects` subjects per class, each subject with its own stain shift. Deterministic for a
    seed. Each file is written atomically; existing files are never replaced unless `overwrite`
    (the check runs before anything is written). Returns the written paths in order.
    """
    root = Path(out_dir)
    plan = plan_annotated_folder(n_all, n_hem, n_subjects, seed, ext)
    targets = [root / relative for relative, *_ in plan]
    if not overwrite:
        existing = [path for path in targets if path.exists()]
        if existing:
            raise FileExistsError(
                f"{existing[0]} already exists ({len(existing)} of the {len(targets)} files to "
                "write); choose an empty folder or pass overwrite=True (--overwrite)"
            )
    for label in ("all", "hem"):
        (root / label).mkdir(parents=True, exist_ok=True)
    for path, (_, label, _, cell_seed, stain) in zip(targets, plan, strict=True):
        _write_image_atomic(path, make_cell(label, cell_seed, size, stain))
    return targets


def write_samples(out_dir: str | os.PathLike) -> list[Path]:
    """(Re)write the shipped samples: one ALL cell, one HEM cell, a field and the field's truth."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, label, seed in (SAMPLE_ALL_CELL, SAMPLE_HEM_CELL):
        _write_image_atomic(root / name, make_cell(label, seed))
        written.append(root / name)
    name, seed = SAMPLE_FIELD
    field, truth = make_field(seed, **SAMPLE_FIELD_KWARGS)
    _write_image_atomic(root / name, field)
    text = json.dumps({"seed": seed, "cells": [cell.to_dict() for cell in truth]}, indent=1)
    write_bytes_atomic(root / SAMPLE_FIELD_TRUTH, (text + "\n").encode(), mode=None, sync=False)
    written += [root / name, root / SAMPLE_FIELD_TRUTH]
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m napari_allbag.data.synthetic`: write the shipped samples or an annotated folder."""
    parser = argparse.ArgumentParser(
        prog="python -m napari_allbag.data.synthetic",
        description="Write synthetic C-NMC-like cells: the shipped samples or an annotated folder.",
    )
    parser.add_argument("--write-samples", metavar="DIR", help="(re)write the sample_data files")
    parser.add_argument("--annotated", metavar="DIR", help="write an annotated folder (all/, hem/)")
    parser.add_argument("--n-all", type=int, default=100, help="ALL cells (default 100)")
    parser.add_argument("--n-hem", type=int, default=100, help="HEM cells (default 100)")
    parser.add_argument("--subjects", type=int, default=3, help="subjects per class (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=REFERENCE_SIZE, help="image side in pixels")
    parser.add_argument("--ext", default=".bmp", help=f"one of {', '.join(WRITE_EXTENSIONS)}")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if not args.write_samples and not args.annotated:
        parser.error("nothing to do: give --write-samples DIR and/or --annotated DIR")
    if args.write_samples:
        for path in write_samples(args.write_samples):
            print(path)
    if args.annotated:
        try:
            paths = write_annotated_folder(
                args.annotated,
                args.n_all,
                args.n_hem,
                args.subjects,
                args.seed,
                args.size,
                args.ext,
                args.overwrite,
            )
        except (FileExistsError, ValueError) as error:
            parser.exit(1, f"error: {error}\n")
        print(f"wrote {len(paths)} images under {args.annotated}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
