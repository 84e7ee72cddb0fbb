"""Deterministic bright-field blood-smear fields and single-cell crops, with known white cells.

What a microscope camera sees through a stained smear (May-Gruenwald-Giemsa / Wright): a pale
background, many pink red cells (biconcave, so paler in the middle; they overlap), a few
purple-stained white cells, platelets (small purple dots), cells cut by the field's edge.
Bright-field is transmitted light, so the drawing works in optical density (absorbance): every
object adds its density, and the image is ``background * 10 ** -density``. Overlapping red cells
are darker where they overlap, as in real smears, and no colour is ever pasted over another.

White cells come in the project's two classes, drawn the way haematologists tell them apart:

* ALL-like (lymphoblast): large and round, a round nucleus filling most of the cell, a thin
  rim of pale bluish cytoplasm;
* HEM-like (normal white cell): smaller, a lobed (neutrophil-like) or kidney-shaped (monocyte-
  like) nucleus, more visible cytoplasm.

The generator tests code logic (positions, counts, border flags), it is no stand-in for the real
images in ``../shared/data/brightfield_sample``. Same arguments, same bytes (everything is drawn
from ``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from napari_allbag.defaults import CLASS_NAMES


@dataclass(frozen=True)
class BrightfieldLook:
    """Knobs of the drawing; sizes are in pixels at ``scale=1`` (a 2000 x 1500 field).

    Colours are RGB as seen on the background; they are turned into optical densities.
    red_cover: fraction of the field the red cells cover (they overlap, so some is doubled).
    White-cell radii are about twice the red cells' (1.6 to 2.25 times), as on the real sample's
    masks (equivalent radius 1.9 to 2.1 red-cell radii); they used to be 1.2 to 1.8 times,
    smaller than real white cells (the "hem" ones most).
    """

    scale: float = 1.0
    background: tuple[int, int, int] = (236, 230, 224)
    vignetting: float = 0.10
    noise_sigma: float = 2.5
    red_colour: tuple[int, int, int] = (208, 140, 158)
    red_radius: tuple[float, float] = (28.0, 36.0)
    red_pallor: float = 0.45
    red_cover: float = 0.45
    nucleus_colour: tuple[int, int, int] = (92, 42, 140)
    cytoplasm_colour: tuple[int, int, int] = (196, 180, 214)
    all_radius: tuple[float, float] = (58.0, 72.0)
    hem_radius: tuple[float, float] = (50.0, 62.0)
    platelet_colour: tuple[int, int, int] = (150, 100, 170)
    platelet_radius: tuple[float, float] = (3.0, 6.0)


@dataclass(frozen=True)
class WhiteCell:
    """One drawn white cell: centre (row, col), outer radius, class, and how it lies."""

    centre: tuple[float, float]
    radius: float
    label: str
    touching: bool = False
    cut_by_border: bool = False


@dataclass
class BrightfieldTruth:
    """What was drawn. `labels`: int32, white cell i (0-based) has id i + 1 (0 elsewhere).

    red_cells and platelets: float arrays of rows (centre_row, centre_col, radius).
    """

    white_cells: list[WhiteCell]
    labels: np.ndarray
    red_cells: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    platelets: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    @property
    def n_white(self) -> int:
        return len(self.white_cells)


def make_brightfield_field(
    seed: int,
    shape: tuple[int, int] = (1500, 2000),
    n_white: int = 6,
    n_touching_pairs: int = 1,
    n_border: int = 1,
    n_platelets: int = 30,
    look: BrightfieldLook | None = None,
) -> tuple[np.ndarray, BrightfieldTruth]:
    """A smear field (HxWx3 uint8 RGB) and its truth.

    `n_white` white cells of both classes (alternating, a random first); among them
    `n_touching_pairs` touching pairs and `n_border` cells cut by the image border.
    """
    look = look or BrightfieldLook()
    if 2 * n_touching_pairs + n_border > n_white:
        raise ValueError(
            f"n_white={n_white} cannot hold {n_touching_pairs} pair(s) and {n_border} border cell(s)"
        )
    rng = np.random.default_rng(seed)
    labels = _class_sequence(rng, n_white)
    cells = _place_white_cells(rng, shape, labels, n_touching_pairs, n_border, look)
    return _render(rng, shape, cells, n_platelets, look)


def make_brightfield_crop(
    seed: int, label: str, size: int = 257, look: BrightfieldLook | None = None
) -> tuple[np.ndarray, BrightfieldTruth]:
    """One white cell of class `label` centred in a size x size crop among red cells (ALL-IDB2-like).

    The cell's diameter is about 45% of the crop, as in ALL-IDB2's 257 x 257 crops.
    """
    _check_label(label)
    look = look or BrightfieldLook()
    mean_radius = float(np.mean(look.all_radius if label == "all" else look.hem_radius))
    look = replace(look, scale=0.225 * size / mean_radius)
    rng = np.random.default_rng(seed)
    radius = _white_radius(rng, label, look)
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    return _render(rng, (size, size), [WhiteCell(centre, radius, label)], 3, look)


# --- layout -------------------------------------------------------------------------------------


def _check_label(label: str) -> None:
    if label not in CLASS_NAMES:
        raise ValueError(f"label must be one of {CLASS_NAMES}, got {label!r}")


def _class_sequence(rng: np.random.Generator, n: int) -> list[str]:
    first = int(rng.integers(2))
    return [CLASS_NAMES[(first + i) % 2] for i in range(n)]


def _white_radius(rng: np.random.Generator, label: str, look: BrightfieldLook) -> float:
    low, high = look.all_radius if label == "all" else look.hem_radius
    return float(rng.uniform(low, high) * look.scale)


def _place_white_cells(rng, shape, labels, n_pairs, n_border, look) -> list[WhiteCell]:
    """Pairs first (touching, slightly overlapping), then border cells, then free cells."""
    cells: list[WhiteCell] = []
    radii = [_white_radius(rng, label, look) for label in labels]
    k = 0
    for _ in range(n_pairs):
        first = _free_spot(rng, shape, radii[k] + radii[k + 1], cells, margin=radii[k])
        angle = rng.uniform(0, 2 * math.pi)
        distance = 0.93 * (radii[k] + radii[k + 1])
        second = (first[0] + distance * math.sin(angle), first[1] + distance * math.cos(angle))
        cells += [
            WhiteCell(first, radii[k], labels[k], touching=True),
            WhiteCell(second, radii[k + 1], labels[k + 1], touching=True),
        ]
        k += 2
    for _ in range(n_border):
        centre = _border_spot(rng, shape, radii[k], cells)
        cells.append(WhiteCell(centre, radii[k], labels[k], cut_by_border=True))
        k += 1
    for radius, label in zip(radii[k:], labels[k:], strict=True):
        centre = _free_spot(rng, shape, radius, cells, margin=radius + 2)
        cells.append(WhiteCell(centre, radius, label))
    return cells


def _far_from(centre, radius: float, cells: list[WhiteCell], gap: float) -> bool:
    return all(math.dist(centre, cell.centre) > radius + cell.radius + gap for cell in cells)


def _free_spot(rng, shape, radius, cells, margin) -> tuple[float, float]:
    """A centre at least `margin` inside the image, clear of the cells placed so far."""
    height, width = shape
    for _ in range(2000):
        centre = (rng.uniform(margin, height - margin), rng.uniform(margin, width - margin))
        if _far_from(centre, radius, cells, gap=3 * radius):
            return centre
    raise ValueError(f"no room for another white cell of radius {radius:.0f} in {shape}")


def _border_spot(rng, shape, radius, cells) -> tuple[float, float]:
    """A centre inside the image, 0.2 to 0.6 radii from one of its four edges."""
    height, width = shape
    for _ in range(2000):
        inset = rng.uniform(0.2, 0.6) * radius
        side = int(rng.integers(4))
        along = rng.uniform(2 * radius, (width if side < 2 else height) - 2 * radius)
        centre = [
            (inset, along),
            (height - 1 - inset, along),
            (along, inset),
            (along, width - 1 - inset),
        ][side]
        if 0 <= centre[0] < height and 0 <= centre[1] < width:
            if _far_from(centre, radius, cells, gap=3 * radius):
                return centre
    raise ValueError(f"no room for a border white cell of radius {radius:.0f} in {shape}")


# --- drawing ------------------------------------------------------------------------------------


def _density(colour, background) -> np.ndarray:
    """Optical density (per channel) of a stain that shows `colour` on `background`."""
    colour = np.maximum(np.asarray(colour, np.float32), 1.0)
    return np.log10(np.asarray(background, np.float32) / colour)


def _render(rng, shape, cells, n_platelets, look) -> tuple[np.ndarray, BrightfieldTruth]:
    height, width = shape
    density = np.zeros((height, width, 3), np.float32)
    labels = np.zeros((height, width), np.int32)
    white = _draw_white_cells(rng, density, labels, cells, look)
    reds = _draw_red_cells(rng, density, white, look)
    platelets = _draw_platelets(rng, density, white, n_platelets, look)
    image = _expose(rng, density, look)
    truth_cells = [_with_border_flag(cell, labels, i + 1) for i, cell in enumerate(cells)]
    return image, BrightfieldTruth(truth_cells, labels, reds, platelets)


def _with_border_flag(cell: WhiteCell, labels: np.ndarray, cell_id: int) -> WhiteCell:
    edges = (labels[0], labels[-1], labels[:, 0], labels[:, -1])
    on_edge = any(bool((edge == cell_id).any()) for edge in edges)
    return replace(cell, cut_by_border=on_edge)


def _window(shape, centre, reach):
    """Bounding slices of a disc of radius `reach` and its pixel grid, or None when outside."""
    height, width = shape[:2]
    top, left = max(0, int(centre[0] - reach)), max(0, int(centre[1] - reach))
    bottom = min(height, int(math.ceil(centre[0] + reach)) + 1)
    right = min(width, int(math.ceil(centre[1] + reach)) + 1)
    if top >= bottom or left >= right:
        return None
    rows, cols = np.mgrid[top:bottom, left:right].astype(np.float32)
    return (slice(top, bottom), slice(left, right)), rows - centre[0], cols - centre[1]


def _soft_disc(distance: np.ndarray, radius: float, edge: float = 1.2) -> np.ndarray:
    """1 inside, 0 outside, a smooth edge about `edge` pixels wide (anti-aliased outline)."""
    return np.clip((radius - distance) / edge + 0.5, 0.0, 1.0)


def _draw_red_cells(rng, density, white_cells, look) -> np.ndarray:
    """Red cells over the field, kept off the white cells; returns (row, col, radius) rows."""
    height, width = density.shape[:2]
    low, high = (r * look.scale for r in look.red_radius)
    n = int(look.red_cover * height * width / (math.pi * ((low + high) / 2) ** 2))
    stain = _density(look.red_colour, look.background)
    drawn = []
    for _ in range(n):
        radius = rng.uniform(low, high)
        centre = (
            rng.uniform(-radius / 2, height + radius / 2),
            rng.uniform(-radius / 2, width + radius / 2),
        )
        if not _far_from(centre, radius, white_cells, gap=-0.1 * radius):
            continue
        window = _window(density.shape, centre, radius + 2)
        if window is None:
            continue
        where, dy, dx = window
        distance = np.hypot(dy, dx)
        centre_dip = look.red_pallor * np.exp(-((distance / (0.45 * radius)) ** 2))
        thickness = _soft_disc(distance, radius) * (1.0 - centre_dip)
        density[where] += thickness[..., None] * stain * rng.uniform(0.85, 1.15)
        drawn.append((centre[0], centre[1], radius))
    return np.array(drawn, np.float64).reshape(-1, 3)


def _draw_white_cells(rng, density, labels, cells, look) -> list[WhiteCell]:
    """Cytoplasm disc plus nucleus per cell; labels hold each cell's visible disc (id i + 1)."""
    nucleus = _density(look.nucleus_colour, look.background)
    cytoplasm = _density(look.cytoplasm_colour, look.background)
    owner = np.full(labels.shape, np.inf, np.float32)  # distance to the nearest centre so far
    for cell_id, cell in enumerate(cells, start=1):
        window = _window(density.shape, cell.centre, cell.radius + 2)
        if window is None:
            continue
        where, dy, dx = window
        distance = np.hypot(dy, dx)
        body = _soft_disc(distance, cell.radius)
        core = _nucleus_mask(rng, cell, dy, dx)
        shade = rng.uniform(0.85, 1.1) * _chromatin(rng, distance.shape)
        tint = body[..., None] * cytoplasm + core[..., None] * (nucleus - cytoplasm) * shade
        density[where] = np.maximum(density[where], tint)  # a touching pair does not double up
        mine = (body > 0.5) & (distance < owner[where])  # overlap of a pair: nearest centre wins
        labels[where][mine] = cell_id
        owner[where][mine] = distance[mine]
    return list(cells)


def _chromatin(rng, shape: tuple[int, int]) -> np.ndarray:
    """Smooth blotchy texture around 1 (clumped chromatin), same shape as the cell's window."""
    coarse = rng.normal(1.0, 0.12, (max(2, shape[0] // 6), max(2, shape[1] // 6)))
    return cv2.resize(coarse.astype(np.float32), shape[::-1], interpolation=cv2.INTER_CUBIC)[
        ..., None
    ]


def _nucleus_mask(rng, cell: WhiteCell, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Soft nucleus mask: round and large (ALL), or lobed / kidney-shaped and smaller (HEM)."""
    r = cell.radius
    angle = rng.uniform(0, 2 * math.pi)
    if cell.label == "all":
        shift = rng.uniform(0.0, 0.06) * r
        y, x = dy - shift * math.sin(angle), dx - shift * math.cos(angle)
        stretch = rng.uniform(0.92, 1.0)
        return _soft_disc(np.hypot(y, x * stretch), rng.uniform(0.78, 0.86) * r)
    if rng.random() < 0.5:
        return _lobes(rng, r, angle, dy, dx)
    bean = _soft_disc(np.hypot(dy, dx), 0.6 * r)
    bite_y, bite_x = dy - 0.55 * r * math.sin(angle), dx - 0.55 * r * math.cos(angle)
    return bean * (1.0 - _soft_disc(np.hypot(bite_y, bite_x), 0.32 * r))


def _lobes(rng, r: float, angle: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Two to four lobes on an arc, joined (a segmented neutrophil's nucleus)."""
    n_lobes = int(rng.integers(2, 5))
    mask = np.zeros_like(dy)
    for k in range(n_lobes):
        theta = angle + (k - (n_lobes - 1) / 2) * 0.9
        cy, cx = 0.35 * r * math.sin(theta), 0.35 * r * math.cos(theta)
        mask = np.maximum(mask, _soft_disc(np.hypot(dy - cy, dx - cx), 0.26 * r))
    return mask


def _draw_platelets(rng, density, white_cells, n, look) -> np.ndarray:
    height, width = density.shape[:2]
    stain = _density(look.platelet_colour, look.background)
    drawn = []
    for _ in range(n):
        radius = rng.uniform(*look.platelet_radius) * max(look.scale, 0.5)
        centre = (rng.uniform(0, height), rng.uniform(0, width))
        if not _far_from(centre, radius, white_cells, gap=4):
            continue
        where, dy, dx = _window(density.shape, centre, radius + 2)
        density[where] += (
            _soft_disc(np.hypot(dy, dx * rng.uniform(0.7, 1.0)), radius)[..., None] * stain
        )
        drawn.append((centre[0], centre[1], radius))
    return np.array(drawn, np.float64).reshape(-1, 3)


def _expose(rng, density: np.ndarray, look: BrightfieldLook) -> np.ndarray:
    """Transmitted light through the densities, with vignetting and camera noise, as uint8."""
    height, width = density.shape[:2]
    rows = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / max(height, width)
    cols = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / max(height, width)
    falloff = 1.0 - look.vignetting * 2.0 * (rows[:, None] ** 2 + cols[None, :] ** 2)
    light = np.power(10.0, -density, dtype=np.float32)
    light *= np.asarray(look.background, np.float32)
    light *= falloff[..., None]
    if look.noise_sigma > 0:
        light += rng.normal(0.0, look.noise_sigma, light.shape).astype(np.float32)
    image = np.clip(light, 0, 255)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)  # optics: no pixel-sharp edges
    return np.rint(image).astype(np.uint8)
