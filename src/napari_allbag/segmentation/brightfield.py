"""White cells in bright-field images: stained smears and single-cell crops on a pale background.

The paper's recipe (Otsu threshold, erosion, convex hull, centred crop) assumes one cell on black.
A bright-field photograph has the opposite contrast, and most of its dark pixels are red cells,
so here the threshold runs on a *stain channel* instead of grey:

    stain = 384 * B / (R + G + B)      (uint8; a neutral grey is 128)

The purple (Romanowsky / May-Gruenwald-Giemsa) nucleus is the only structure whose blue share is
clearly above a third; pink red cells and the pale background sit below. The channel was chosen by
measurement against the masks of the development sample (docs/image-kinds.md): among HSV
saturation, CMYK magenta and yellow, B-G, B-R, 1-G and Lab -b*, the ratio separates white-cell
pixels best on smear fields (AUC 0.98) and, thresholded, finds nuclei rather than red cells.

Steps (all sizes relative to the image's own scale, the median radius of its isolated red cells,
compact dark objects that are not purple; single-cell crops with too few whole red cells fall
back to a tenth of the image side):

1. black field stop (dark regions touching the border, mostly neutral black), other neutral
   near-black pixels and ink drawn on the image (arrows, rings, scale bars in a pure colour)
   excluded from every statistic (a nucleus's darkest pixels stay: they are purple however dim
   the exposure);
2. nuclei = stain above the upper threshold of a three-class Otsu (background / red cells and
   cytoplasm / nuclei) of the valid pixels, opened to drop specks;
3. lobes closer than about one red-cell radius are grouped into one white cell (a neutrophil's
   segmented nucleus is one cell); a group holding two or more nuclei at least as thick as a
   red cell (distance-transform domes with a neck between them, caps of the h-dome transform) is split by a
   watershed, and each part's cytoplasm is what lies nearer to it than to the others; so is a
   group of pieces apart that are each as large as a lone nucleus (too thin for a
   dome where the threshold caught a blast's patchy chromatin in part); nuclei pressed together
   along a wide front (no neck) are cut between two deep concavities of their outline when that
   leaves two compact parts each as large as a lone nucleus (fields only: a single-cell crop's
   scale is a guess);
4. nuclei below 0.2 red-cell areas or without a clearly purple core, and cells (hulls)
   smaller than a red cell (platelets, debris; a quarter of one where the border cuts the
   cell) are rejected; each kept cell grows into the stained cytoplasm around its nucleus
   (pixels a quarter of the way from the red cells' stain to the nucleus threshold, within one
   red-cell radius), then takes its hull;
   in a single-cell crop (no measured scale, so touching cells are not split either) cells
   whose hulls touch are one (lobes further apart than the guessed scale, one cytoplasm);
5. crops exactly like the dark path's (`segmentation.dark._crop`): the hull on black, centred,
   resized;
6. the table keeps each cell's nucleus area in red-cell areas (`nucleus_area_rbc`, fields only:
   a crop's scale is a guess); one under `defaults.SMALL_NUCLEUS_RBC` is kept but named for a
   look (`segmentation.feedback`, the review flags): a faint nucleus, or a platelet clump.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu
from skimage.morphology import reconstruction
from skimage.segmentation import watershed

from napari_allbag.progress import Progress, drive
from napari_allbag.segmentation.dark import (
    SegmentationParams,
    SegmentationResult,
    _check_image,
    _Component,
    _crop,
    _empty_result,
    _fill_row,
    _filled_hull,
    empty_table,
    segment_image_progress,
)

#: Pixels darker than this (grey level) may belong to a black background or field stop.
_BLACK = 40
#: ... if they are also neutral: channels differing by less than this (max - min). A nucleus
#: stains dark but purple: on the sample its pixels under grey 40 differ by 67 to 156 (5th
#: percentile to median; 54 and up in a 20% darker exposure); field-stop pixels by 3 to 6
#: (median), 47 at the 99th percentile of its coloured rim.
_BLACK_CHROMA = 48
#: A field stop under veiling glare is still darker than this share of the background's grey
#: (`_stop_level`): the stops of the sample's fields sit at 2-8% of it (medians 6 to 17 against
#: 205 to 235), 15% glare lifts them to about 22%. Smear pixels that dark are nuclei (a Tecom
#: crop's reach 14%), purple, which the chroma test keeps out of a stop.
_STOP_SHARE = 1 / 3
#: ... and grey: an unlit stop is the camera's black, the medians of its channels within this
#: of each other (the sample's stops: 3 to 7, with or without a camera's noise of sd 6, which
#: spreads each pixel's channels by 10 and more). Dim greyish red cells are not: a clump of
#: `arslan_b35`'s at a window's edge in the tiled benchmark's mosaic, darker than a third of
#: its neighbours' background, measured 19 (71, 52, 67).
_STOP_CHROMA = 12
_BLACK_IMAGE = "no cell found: the image is black (or all field stop), no bright-field smear"
#: Fewer isolated red cells than this: the scale falls back to a fraction of the image side.
_MIN_RED_CELLS = 20
#: Erosion depths (pixels) tried in turn to part touching red cells when too few are isolated
#: (the contacts widen with the magnification: a dense pig smear enlarged 1.5x needs 4-6).
_CONTACT_EROSIONS = (1, 2, 3, 4, 6)
#: How `red_cell_radius` names its fallback for single-cell crops (a guess, not a measurement).
_CROP_GUESS = "a crop, side / 10"
_TOO_SMALL = "smaller than a white-cell nucleus (platelet or debris)"
#: Where a guessed scale leaves nothing but nuclei too small for it, the scale is measured again
#: on the image enlarged this many times, the next where the first finds too few red cells (red
#: cells of 2-4 px are too small for the 3x3 opening and 1 px erosions that measure them; those
#: of 2.5 px need 4x: `pig_test_654` at half size).
_FINER = (2, 4)
#: A single-cell crop with more cells than this looks wrong.
_MANY_CELLS = 20
#: Above-threshold nucleus pixels of one white cell (lobes together) cover at least this many
#: red-cell areas (specks of stain and most platelets much less; on the sample 0.28 and up).
_MIN_NUCLEUS = 0.2
#: No connected piece of nucleus stain covers more red-cell areas than this: the largest white
#: cells are about three red cells across (9 areas, nucleus and cytoplasm; on the sample's
#: images and their rescaled copies the largest piece is 10 at most). A "red-cell scale" that
#: makes one larger came from specks such as an eosinophil's granules (an enlarged crop of one
#: measured a 3.3 px red cell and found 95 cells): `red_cell_radius` then looks further.
_MAX_NUCLEUS = 20.0
#: Ink drawn on the image (`drawn_ink`): a channel at least this bright and another at most
#: this dark. On the sample's 40 images no pixel is both (their most saturated, SigTuple's
#: vivid nuclei, reach (60, 0, 185)), nor at 240 / 15; a pure blue after JPEG compression
#: stays within 240 / 15. The ink grows by this many pixels (its anti-aliased and blurred edge).
_INK_FULL = 240
_INK_NONE = 15
_INK_EDGE = 7
#: Sigma of the stain's blur against pixel noise, in red-cell radii (`_smoothed`).
_NOISE_SIGMA = 0.05
#: A white cell (nucleus and cytoplasm, its hull) is larger than a red cell; a platelet or a
#: clump of them is smaller.
_MIN_CELL = 1.0
#: A cell cut by the border or field stop may show any part of itself: its visible hull need
#: only be about as large as the smallest nucleus (`_MIN_NUCLEUS`), which rejected platelets.
_MIN_CUT_CELL = 0.25
#: Share of valid pixels surely red cells or background, even where a white cell fills a crop.
_UNSTAINED_SHARE = 0.25
#: A nucleus's stain exceeds that level (red cells, background) by at least this much
#: (0.05 of blue share): on the sample, nuclei sit 27 to 55 above, red-cell speckle 5 to 7.
_MIN_CONTRAST = 20
#: The bluest twentieth of a nucleus's pixels exceeds the red cells' level by at least this much
#: (a hysteresis on the stain: pixels join at `_MIN_CONTRAST`, a nucleus needs a clearly purple
#: core). On the sample nuclei reach 41 to 134 above; lilac red cells, their rims and overlaps,
#: which pass the lower level where the image has little contrast, 23 to 30.
_MIN_PEAK_CONTRAST = 35
#: Two touching nuclei: each one's distance-transform dome rises above the neck between them
#: by at least this many red-cell radii, and this share of the deepest dome (an elongated
#: single nucleus has two shallow domes on one ridge).
_NECK_DEPTH = 0.25
_NECK_SHARE = 0.3
#: A nucleus of its own is at least this many red-cell radii thick (its dome this deep).
_DOME = 1.0
#: Two nuclei pressed together along a wide front: two concavities of the outline at least
#: this many red-cell radii deep, and a cut between them leaving two compact parts (solidity),
#: each at least this many red-cell areas (a lone nucleus: on the sample 1.2 and up).
_CONCAVE_DEPTH = 0.5
_PART_SOLIDITY = 0.85
_PART_AREA = 1.0
#: Nucleus pieces further than this many red-cell radii from a thick round nucleus are a
#: neighbour's (a piece the threshold parted from the same nucleus lies closer; on the
#: generator's touching pairs the neighbour's lobes lie 0.56 to 0.79 away).
_APART = 0.25
#: Cytoplasm: stain at least this share of the way from the red cells' level to the nuclei's
#: threshold. Cytoplasm stains far less than a nucleus: on the sample's masks its median lies
#: 0.05 to 0.65 of the way (mostly 0.2 to 0.45); half-way, as before, missed most of it (mean
#: IoU with the masks 0.66 on fields, 0.63 on crops; 0.81 and 0.72 at a quarter, 0.80 and 0.68
#: at 0.35, counts unchanged from 0.05 to 0.5).
_CYTOPLASM_SHARE = 0.25
#: Nuclei never cover more than this share of a bright-field image's valid pixels.
_MOST_STAINED = 0.3
#: `detect_background` decides on every k-th pixel, about this many a side (4,096 pixels: each
#: share within about 1%; on the samples the figures move by at most 6 grey levels from those of
#: 256 a side, and `auto` costs 0.05 ms more than `dark` per C-NMC cell instead of 0.35 ms).
_DECISION_SIDE = 64


@dataclass(frozen=True)
class BackgroundGuess:
    """Which segmentation an image needs: "dark" (cells on black) or "bright" (bright-field)."""

    mode: str
    confident: bool
    reason: str


def detect_background(image: np.ndarray) -> BackgroundGuess:
    """Decide dark vs bright background from the image itself.

    Two figures: the fraction of near-black pixels, and the 90th percentile of the grey level of
    the other pixels. A cell on black (C-NMC: 82-98% black, the rest at most grey 107) is mostly
    black; a bright-field image (even behind a black circular field stop: at most 27% black on
    the sample) is mostly pale background, its non-black pixels reaching grey 133 and more.
    """
    _check_image(image)
    grey = cv2.cvtColor(_sample(image, _DECISION_SIDE), cv2.COLOR_RGB2GRAY)
    hist = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel()  # 3x np.bincount's speed
    black = hist[:_BLACK].sum() / grey.size
    rest = hist[_BLACK:]
    if rest.sum() == 0:
        return BackgroundGuess("dark", False, "the image is black throughout")
    bright_level = _BLACK + int(np.searchsorted(np.cumsum(rest), 0.9 * rest.sum()))
    figures = f"{black:.0%} near-black pixels, the rest reach grey {bright_level}"
    if black >= 0.5:  # mostly black: a cell on black, unless the rest is pale smear
        if bright_level >= 180:
            return BackgroundGuess("bright", False, f"pale behind a small field stop? ({figures})")
        return BackgroundGuess("dark", bright_level < 150, f"black background ({figures})")
    if bright_level >= 100:
        return BackgroundGuess("bright", bright_level >= 120, f"pale background ({figures})")
    return BackgroundGuess("dark", False, f"dark image without a black background ({figures})")


def stain_channel(image: np.ndarray) -> np.ndarray:
    """384 * B / (R + G + B) as uint8: purple nuclei high, pink red cells and background low."""
    blue = image[:, :, 2].astype(np.uint16)
    total = image[:, :, 0] + image[:, :, 1].astype(np.uint16) + blue
    return cv2.divide(blue, total, scale=384.0, dtype=cv2.CV_8U)  # 0 where the pixel is black


def neutral_black(image: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Pixels both near-black and neutral (bool): a field stop or a black border, not the
    darkest pixels of a deeply stained nucleus, which are purple however dark the exposure."""
    dark = (grey < _BLACK).view(np.uint8)
    n_dark = cv2.countNonZero(dark)
    if n_dark > 0.02 * dark.size:  # a field stop: the chroma of every pixel
        return dark.view(bool) & (_chroma(image) < _BLACK_CHROMA)
    black = np.zeros(grey.shape, bool)
    if n_dark:  # a few dark pixels (nuclei, specks): only theirs
        cols, rows = cv2.findNonZero(dark).reshape(-1, 2).T
        neutral = _neutral(image[rows, cols])
        black[rows[neutral], cols[neutral]] = True
    return black


def field_stop_mask(image: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Dark regions touching the image border (a microscope's field stop), as bool: large ones
    (0.2% of the image), darker than `_stop_level` and mostly grey (`_STOP_CHROMA`), their
    coloured rim included; a purple nucleus cut by the border, however dark, is not a stop."""
    level = _stop_level(grey)
    dark = (grey < level).view(np.uint8)
    # outlines with their holes: a round stop is a ring whose outline, filled, is the whole
    # image, and every dark pixel inside it (a nucleus's darkest) joined the stop
    contours, hierarchy = cv2.findContours(dark, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    height, width = grey.shape
    stop = np.zeros(grey.shape, np.uint8)
    for k, contour in enumerate(contours):
        left, top, w, h = cv2.boundingRect(contour)
        on_border = left == 0 or top == 0 or left + w == width or top + h == height
        if hierarchy[0][k][3] >= 0 or not on_border or cv2.contourArea(contour) < 0.002 * dark.size:
            continue  # a hole, or a piece inside the field
        box, corner = (slice(top, top + h), slice(left, left + w)), np.array([left, top])
        region = np.zeros((h, w), np.uint8)
        cv2.drawContours(region, [contour - corner], -1, 1, cv2.FILLED)
        holes = [contours[j] - corner for j in _children(hierarchy, k)]
        cv2.drawContours(region, holes, -1, 0, cv2.FILLED)
        cv2.drawContours(region, holes, -1, 1, 1)  # a hole's outline runs on the stop's pixels
        region &= dark[box]
        if _is_grey(image[box][region > 0]):
            stop[box] |= region
    if stop.any():  # the stop's blurred rim is neither stop nor smear
        rim = max(3, round(0.01 * max(height, width)))
        stop = cv2.dilate(stop, np.ones((rim, rim), np.uint8))
    return stop.view(bool)


def _is_grey(pixels: np.ndarray) -> bool:
    """Whether (N, 3) pixels are mostly neutral (`_BLACK_CHROMA`, each pixel) and grey on the
    whole (`_STOP_CHROMA`, the channels' medians: a camera's noise averages out, a tint not)."""
    if np.count_nonzero(_neutral(pixels)) * 2 < len(pixels):
        return False
    median = np.median(pixels[:: max(1, len(pixels) // 4096)], axis=0)
    return float(median.max() - median.min()) < _STOP_CHROMA


def _children(hierarchy: np.ndarray, k: int) -> list[int]:
    """Indices of contour `k`'s holes (OpenCV's two-level hierarchy: first child, then next)."""
    children, j = [], int(hierarchy[0][k][2])
    while j >= 0:
        children.append(j)
        j = int(hierarchy[0][j][0])
    return children


def _stop_level(grey: np.ndarray) -> int:
    """Grey under which a border region may be a field stop: `_STOP_SHARE` of the background's
    level (the 90th percentile), at least `_BLACK`. Glare of 15% of white lifted the stops of
    the sample's pig fields from a median of 13 to 48: with `_BLACK` alone all four gave "no
    cell found", now two give the exact count (`bench_brightfield.py --robustness`, glare)."""
    sample = np.ascontiguousarray(grey[::4, ::4])
    hist = cv2.calcHist([sample], [0], None, [256], [0, 256]).ravel()
    background = int(np.searchsorted(np.cumsum(hist), 0.9 * hist.sum()))
    return max(_BLACK, int(_STOP_SHARE * background))


def _neutral(pixels: np.ndarray) -> np.ndarray:
    """Whether each of (N, 3) pixels has its channels within `_BLACK_CHROMA` (bool, N)."""
    return np.ptp(pixels, axis=1) < _BLACK_CHROMA


def _chroma(image: np.ndarray) -> np.ndarray:
    """max - min over the channels, per pixel (uint8)."""
    brightest, darkest = _channel_extremes(image)
    return brightest - darkest


def _channel_extremes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The brightest and the darkest of the three channels, per pixel (uint8 each)."""
    red, green, blue = cv2.split(image)
    return cv2.max(cv2.max(red, green), blue), cv2.min(cv2.min(red, green), blue)


def red_cell_radius(
    grey: np.ndarray, valid: np.ndarray, purple: np.ndarray | None = None, min_radius: float = 0.0
) -> tuple[float, str]:
    """Radius of the image's whole isolated red cells, and how it was found (the image's scale).

    Red cells are the objects darker than the pale background (grey Otsu); where they touch in a
    dense smear (too few isolated), their darker cores (Otsu again below the first) may, or the
    mask eroded by a few pixels, which cuts the narrow contacts between touching cells (the
    erosion depth is added back to each radius). Isolated ones are compact (solidity > 0.9) and
    do not touch the border; their area-weighted median radius is the scale (specks weigh
    little); a scale under `min_radius` (the one the largest nucleus piece allows) is specks,
    and the next way is tried. A crop of one white cell holds too few whole red cells: then a
    tenth of the shorter side, typical of such crops.
    """
    hist = np.bincount(grey[valid], minlength=256)
    first = _otsu(hist)

    def scale(objects: list[tuple[float, float]]) -> float:
        if len(objects) < _MIN_RED_CELLS:
            return 0.0
        radii, areas = np.array(objects).T
        order = np.argsort(radii)
        cumulative = np.cumsum(areas[order])
        radius = float(radii[order[np.searchsorted(cumulative, cumulative[-1] / 2)]])
        return radius if radius >= min_radius else 0.0

    best = _compact_dark_objects(grey, valid, first, purple=purple)
    if not scale(best):  # touching red cells: try their darker cores
        cores = _compact_dark_objects(grey, valid, _otsu(hist[: first + 1]), purple=purple)
        best = cores if len(cores) >= 2 * _MIN_RED_CELLS and scale(cores) else best  # or granules
    for depth in _CONTACT_EROSIONS:
        if scale(best):
            break
        best = _compact_dark_objects(grey, valid, first, depth, purple)
    radius = scale(best)
    if radius:
        return radius, f"area-weighted median of {len(best)} red cells"
    height, width = grey.shape
    return min(height, width) / 10.0, f"only {len(best)} whole red cells: {_CROP_GUESS}"


def _compact_dark_objects(
    grey, valid, threshold: int, erosion: int = 0, purple=None
) -> list[tuple[float, float]]:
    """(radius, area) of compact objects darker than `threshold`, clear of the border; with
    `erosion`, of the mask eroded by that many pixels (radius and area of the uneroded disc);
    with `purple` (bool, nucleus-stained pixels), objects mostly purple are left out (a
    nucleus's chromatin granules, dozens in an enlarged crop of one white cell)."""
    darker = _pallor_filled(((grey < threshold) & valid).view(np.uint8))
    darker = cv2.morphologyEx(darker, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    if erosion:
        darker = cv2.erode(darker, _disc(2 * erosion + 1))
    contours, _ = cv2.findContours(darker, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    height, width = grey.shape
    found = []
    for contour in contours:
        area = cv2.contourArea(contour)
        left, top, w, h = cv2.boundingRect(contour)
        if area < 12 or left == 0 or top == 0 or left + w >= width or top + h >= height:
            continue
        if _is_compact(contour):
            if purple is not None and _mostly(purple, contour, left, top, w, h):
                continue
            radius = math.sqrt(area / math.pi) + erosion
            found.append((radius, math.pi * radius**2))
    return found


def _pallor_filled(mask: np.ndarray) -> np.ndarray:
    """0/1 mask with the holes of its compact parts filled: a red cell's pale centre (its
    central pallor) is a hole in the darker-than-background mask, and in a small image the ring
    around it is only 2-3 pixels wide, so the opening and erosions that follow would wipe out a
    ring and keep only its specks (half-size `sigtuple_test_072CBBB64F89`: 14 red cells of radius
    3 px found instead of 52 of 7). Holes of parts that are not compact are left: they are the
    background enclosed by touching red cells, and filling them would weld a dense smear's red
    cells together so that no erosion parts them."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = mask.copy()
    cv2.drawContours(filled, [c for c in contours if _is_compact(c)], -1, 1, cv2.FILLED)
    return filled


def _is_compact(contour) -> bool:
    """A red cell's outline: solidity (area over its convex hull's) above 0.9."""
    return cv2.contourArea(contour) > 0.9 * cv2.contourArea(cv2.convexHull(contour))


def _mostly(mask: np.ndarray, contour, left: int, top: int, w: int, h: int) -> bool:
    """Whether at least half the pixels inside `contour` are set in the bool `mask`."""
    inside = np.zeros((h, w), np.uint8)
    cv2.drawContours(inside, [contour - np.array([left, top])], -1, 1, cv2.FILLED)
    box = mask[top : top + h, left : left + w]
    return 2 * np.count_nonzero(box[inside > 0]) >= np.count_nonzero(inside)


@dataclass(frozen=True)
class StainLevels:
    """A bright-field image's scale and stain thresholds (what `_scene` measures on the image).

    A large image's tiles get the levels of the whole image (`tiles.segment_large`), so that a
    tile too small to hold enough red and white cells for its own decides like the whole image.
    radius: red-cell radius in pixels; high: nucleus stain threshold; red_stain: stain level of
    red cells and background; measured: the radius came from whole red cells (not a crop's guess).
    """

    radius: float
    high: int
    red_stain: float
    measured: bool = True

    @property
    def low(self) -> int:
        """Stain level of cytoplasm, `_CYTOPLASM_SHARE` of the way from red cells to nuclei."""
        return round(self.red_stain + _CYTOPLASM_SHARE * (self.high - self.red_stain))


@dataclass
class _Scene:
    """What the whole-image steps found, shared by the per-cell steps."""

    image: np.ndarray
    stain: np.ndarray
    stop: np.ndarray
    radius: float  # red-cell radius in pixels
    low: int  # stain level of cytoplasm (`_CYTOPLASM_SHARE` of the way to `high`)
    high: int  # stain level of nuclei (upper threshold)
    red_stain: float  # stain level of red cells and background
    measured: bool = True  # the scale came from whole red cells (not a crop's guess)


def segment_brightfield(
    image: np.ndarray,
    params: SegmentationParams | None = None,
    source: str = "",
    levels: StainLevels | None = None,
) -> SegmentationResult:
    """White cells of a bright-field HxWx3 uint8 RGB image (see the module docstring); with
    `levels`, at those (a large image's, for each of its tiles) instead of the image's own."""
    return drive(segment_brightfield_progress(image, params, source, levels))


def segment_brightfield_progress(
    image: np.ndarray,
    params: SegmentationParams | None = None,
    source: str = "",
    levels: StainLevels | None = None,
) -> Generator[Progress, None, SegmentationResult]:
    """`segment_brightfield` as a progress generator (stages, then cells)."""
    params = params or SegmentationParams()
    _check_image(image)
    stage = "segmenting"
    yield Progress(0, None, stage, "stain channel and field stop")
    scene = _scene(image, levels)
    if isinstance(scene, str):
        return _empty_result(image.shape[:2], params, scene)
    yield Progress(0, None, stage, "nuclei, lobes and touching cells")
    groups, rejected = _white_cell_groups(scene)
    if not groups and levels is None and not scene.measured and _TOO_SMALL in rejected:
        finer = _finer_levels(image, scene)
        if finer is not None:  # a low-resolution field, not a crop: its red cells at 2x
            return (yield from segment_brightfield_progress(image, params, source, finer))
    if not groups:
        return _empty_result(image.shape[:2], params, _nothing_message(rejected, scene))
    yield Progress(0, len(groups), stage, "cells")
    cells, small = _whole_cells(scene, groups)
    if not cells:
        return _empty_result(image.shape[:2], params, _nothing_message(rejected + small, scene))
    cells.sort(key=lambda item: (item[0].top, item[0].left))
    result = _result(scene, cells, params, source)
    yield Progress(len(cells), len(cells), stage, "cells")
    return result


def segment_auto(
    image: np.ndarray, params: SegmentationParams | None = None, source: str = ""
) -> SegmentationResult:
    """Segment with the path the image needs (params.background, "auto": detect_background)."""
    return drive(segment_auto_progress(image, params, source))


def segment_auto_progress(
    image: np.ndarray, params: SegmentationParams | None = None, source: str = ""
) -> Generator[Progress, None, SegmentationResult]:
    """`segment_auto` as a progress generator; the table's `mode` says which path ran."""
    params = params or SegmentationParams()
    _check_image(image)
    guess = None
    mode = params.background
    if mode == "auto":
        guess = detect_background(image)
        mode = guess.mode
    result = yield from _one_path(mode, image, params, source)
    if guess is not None and not guess.confident and not result.n_cells:
        # An unsure guess that finds nothing: the other path may (a bright cell on black).
        other = "bright" if mode == "dark" else "dark"
        second = yield from _one_path(other, image, params, source)
        if second.n_cells:
            mode, result = other, second
            guess = BackgroundGuess(
                other, False, f"{guess.reason}; the {guess.mode} path found nothing"
            )
    result.mode, result.auto = mode, guess is not None
    if guess is not None and not guess.confident:
        result.guessed = guess.reason
        note = f"background guessed as {guess.mode}: {guess.reason}; set background explicitly"
        result.message = f"{note}; {result.message}" if result.message else note
    return result


def _one_path(mode: str, image, params, source):
    if mode == "dark":
        return (yield from segment_image_progress(image, params, source))
    return (yield from segment_brightfield_progress(image, params, source))


# --- whole-image steps --------------------------------------------------------------------------


def _scene(image: np.ndarray, levels: StainLevels | None = None) -> _Scene | str:
    """Stain, field stop, scale and thresholds (the image's own, or `levels` where given); a
    string says why there is nothing to find."""
    grey, stop, valid = _valid_pixels(image)
    if valid.sum() < 64:
        return _BLACK_IMAGE
    stain = stain_channel(image)
    if levels is None:
        levels = _levels(*_measures(grey, stain, valid))
        if isinstance(levels, str):
            return levels
    if stop.any():  # its coloured fringe is about a red-cell radius wide, whatever the size
        stop = _widened(stop, levels.radius)
        valid &= ~stop
    stain = _smoothed(stain, valid, levels.radius)
    radius, high, red_stain = levels.radius, levels.high, levels.red_stain
    return _Scene(image, stain, stop, radius, levels.low, high, red_stain, levels.measured)


def _finer_levels(image: np.ndarray, scene: _Scene) -> StainLevels | None:
    """The image's levels with the red-cell scale measured on it enlarged (`_FINER` times, the
    first factor that finds enough whole red cells), or None where none does (a crop: its guess
    stands). A field at a low resolution (`pig_test_654` at 0.75x: red cells of 4 px, 9 found
    apart at best, so a crop's guess of 31 px and every nucleus "too small") is measured right
    at 2x; at 0.5x (2.5 px) at 4x."""
    for factor in _FINER:
        enlarged = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        grey, _, valid = _valid_pixels(enlarged)
        _, radius, measured = _measures(grey, stain_channel(enlarged), valid)
        if measured:
            return StainLevels(radius / factor, scene.high, scene.red_stain, measured=True)
    return None


def _smoothed(stain: np.ndarray, valid: np.ndarray, radius: float) -> np.ndarray:
    """The stain blurred by a twentieth of a red-cell radius (a Gaussian's sigma), 0 where not
    valid. A faint nucleus barely above its threshold broke, under a camera's noise (sd 6),
    into specks that each fell under a nucleus's size: `arslan_b35` gave 0 cells instead of 4
    (`bench_brightfield.py --robustness`). Relative to the scale, so that it removes pixel noise
    and not detail: under 0.7 px (small images) nothing is blurred."""
    sigma = _NOISE_SIGMA * radius
    if sigma >= 0.7:
        stain = cv2.GaussianBlur(stain, (0, 0), sigma)
    stain[~valid] = 0
    return stain


def measure_levels(windows: Iterable[np.ndarray]) -> StainLevels | str:
    """The levels of an image from windows of it (a large image's samples, read one at a time):
    the thresholds of their pooled stain histogram (every pixel's, as for the image in one
    piece), the median of their red-cell radii (measured ones where any). A string says why
    there are none (all black or uniform)."""
    hist = np.zeros(256, np.int64)
    radii: dict[bool, list[float]] = {True: [], False: []}
    for window in windows:
        grey, _, valid = _valid_pixels(window)
        if valid.sum() >= 64:
            window_hist, radius, measured = _measures(grey, stain_channel(window), valid)
            hist += window_hist
            radii[measured].append(radius)
    if not hist.any():
        return _BLACK_IMAGE
    measured = bool(radii[True])
    return _levels(hist, float(np.median(radii[measured])), measured)


def _valid_pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey, the field stop, and the pixels that are neither stop nor neutral black nor ink
    drawn on the image (bool)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    black = neutral_black(image, grey)
    stop = field_stop_mask(image, grey)
    return grey, stop, ~stop & ~black & ~drawn_ink(image)


def drawn_ink(image: np.ndarray) -> np.ndarray:
    """Pixels of a drawing tool's pure colours and their anti-aliased edges (bool): one channel
    at `_INK_FULL` or more and another at `_INK_NONE` or less, as no stained cell under a
    microscope's light is (an arrow, a ring round a cell or a scale bar drawn in blue, cyan or
    violet would each be a "white cell" to the stain channel)."""
    brightest, darkest = _channel_extremes(image)
    ink = cv2.compare(brightest, _INK_FULL, cv2.CMP_GE) & cv2.compare(
        darkest, _INK_NONE, cv2.CMP_LE
    )
    if not cv2.countNonZero(ink):
        return ink.view(bool)
    return cv2.dilate(ink, np.ones((_INK_EDGE, _INK_EDGE), np.uint8)).view(bool)


def _measures(grey, stain, valid) -> tuple[np.ndarray, float, bool]:
    """The valid pixels' stain histogram, the red-cell radius, whether it was measured (not a
    crop's guess). Red cells are measured among the unstained pixels: a nucleus's dark
    chromatin granules are compact dark objects too (an enlarged crop of one white cell holds
    dozens), but purple."""
    hist = np.bincount(stain[valid], minlength=256)
    purple = stain > _nucleus_threshold(hist) if np.count_nonzero(hist) >= 3 else None
    shrink = 2 if min(grey.shape) >= 1000 else 1  # the scale needs no more pixels than this
    grey, valid = grey[::shrink, ::shrink], valid[::shrink, ::shrink]
    least = 0.0  # the largest nucleus piece covers at most _MAX_NUCLEUS red-cell areas
    if purple is not None:
        purple = purple[::shrink, ::shrink] & valid  # not the field stop's coloured rim
        least = math.sqrt(_largest_piece(purple) / (math.pi * _MAX_NUCLEUS))
    radius, how = red_cell_radius(grey, valid, purple, least)
    return hist, radius * shrink, _CROP_GUESS not in how


def _largest_piece(mask: np.ndarray) -> int:
    """Pixels of the largest 8-connected piece of a bool mask."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0


def _levels(hist: np.ndarray, radius: float, measured: bool) -> StainLevels | str:
    """The thresholds of a stain histogram, at a red-cell radius."""
    if np.count_nonzero(hist) < 3:
        return "no cell found: the image is uniform, nothing is stained"
    high = _nucleus_threshold(hist)
    return StainLevels(radius, high, float(_unstained_level(hist)), measured)


def _widened(mask: np.ndarray, width: float) -> np.ndarray:
    """Bool mask grown by `width` pixels (distance transform on a copy shrunk so that `width`
    is about 8 pixels: a full-size transform would cost more than the rest of the field)."""
    shrink = max(1.0, width / 8.0)
    height, width_px = mask.shape
    small_size = (max(1, round(width_px / shrink)), max(1, round(height / shrink)))
    small = cv2.resize(mask.view(np.uint8), small_size, interpolation=cv2.INTER_AREA) > 0
    clear = cv2.distanceTransform((~small).view(np.uint8), cv2.DIST_L2, 3)
    grown = cv2.resize(
        (clear <= width / shrink).view(np.uint8), (width_px, height), cv2.INTER_NEAREST
    )
    return grown.view(bool) | mask


def _nucleus_threshold(hist: np.ndarray) -> int:
    """Otsu on the stain; where it took a large share (it split red cells from background), the
    upper threshold of a three-class Otsu instead, so that only the nuclei stay above it; never
    less than `_MIN_CONTRAST` above the red cells' level (a nucleus is clearly bluer)."""
    otsu = _otsu(hist)
    if hist[otsu + 1 :].sum() > _MOST_STAINED * hist.sum():
        otsu = int(threshold_multiotsu(hist=hist, classes=3)[1])
    return max(otsu, _unstained_level(hist) + _MIN_CONTRAST)


def _unstained_level(hist: np.ndarray) -> int:
    """Stain level of red cells and background: the median of the valid pixels, or a low
    percentile where the median is itself nucleus (a white cell filling most of a crop: then
    hardly a pixel is `_MIN_CONTRAST` bluer than the median)."""
    cumulative = np.cumsum(hist)
    median = int(np.searchsorted(cumulative, hist.sum() / 2))
    if hist[median + _MIN_CONTRAST :].sum() >= 0.01 * hist.sum():
        return median
    return int(np.searchsorted(cumulative, _UNSTAINED_SHARE * hist.sum()))


@dataclass
class _Nucleus:
    """One white cell's nucleus pixels (0/1) over a box whose corner is (top, left)."""

    top: int
    left: int
    pixels: np.ndarray
    #: the other nuclei split from the same group (same box), whose cytoplasm is not this cell's
    siblings: np.ndarray | None = None


def _white_cell_groups(scene: _Scene) -> tuple[list[_Nucleus], list[str]]:
    """Nucleus masks, one per white cell (lobes grouped, touching cells split), and rejections."""
    nuclei = (scene.stain > scene.high).view(np.uint8)
    speck = max(3, round(scene.radius / 5)) | 1
    nuclei = cv2.morphologyEx(nuclei, cv2.MORPH_OPEN, _disc(speck))
    grouped = _group_lobes(nuclei, scene.radius)
    contours, _ = cv2.findContours(grouped, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    red_area = math.pi * scene.radius**2
    groups: list[np.ndarray] = []
    rejected: list[str] = []
    for contour in contours:  # one outline per group (faster than labelling the whole image)
        left, top, w, h = cv2.boundingRect(contour)
        box = (slice(top, top + h), slice(left, left + w))
        group = np.zeros((h, w), np.uint8)
        cv2.drawContours(group, [contour - np.array([left, top], np.int32)], -1, 1, cv2.FILLED)
        group &= grouped[box]
        lobes = group & nuclei[box]
        area = cv2.countNonZero(lobes)
        if area < _MIN_NUCLEUS * red_area:
            rejected.append(_TOO_SMALL)
            continue
        if not _clearly_purple(scene, scene.stain[box][lobes > 0]):
            rejected.append("not bluer than the red cells")
            continue
        parts = _split_touching(lobes, group, scene.radius) if scene.measured else [lobes]
        for k, part in enumerate(parts):
            siblings = None
            if len(parts) > 1:
                siblings = np.bitwise_or.reduce([p for j, p in enumerate(parts) if j != k])
            groups.append(_Nucleus(int(top), int(left), part, siblings))
    return groups, rejected


def _clearly_purple(scene: _Scene, stain: np.ndarray) -> bool:
    """Whether nucleus pixels are bluer than red cells: on average well above the red cells'
    level, and with a core (their bluest 5%) at least `_MIN_PEAK_CONTRAST` above it."""
    mean_ok = float(np.mean(stain)) > scene.red_stain + 0.5 * (scene.high - scene.red_stain)
    return mean_ok and float(np.percentile(stain, 95)) >= scene.red_stain + _MIN_PEAK_CONTRAST


def _group_lobes(nuclei: np.ndarray, radius: float) -> np.ndarray:
    """Nuclei closed over gaps up to about one red-cell radius (lobes of one cell join).

    The closing runs on a copy shrunk so that the red-cell radius is about 4 pixels (a large
    structuring element on the full image would dominate the run time), then is scaled back.
    """
    shrink = max(1.0, radius / 4.0)
    if shrink == 1.0:
        return cv2.morphologyEx(nuclei, cv2.MORPH_CLOSE, _disc(max(3, round(radius)) | 1))
    height, width = nuclei.shape
    small_size = (max(1, round(width / shrink)), max(1, round(height / shrink)))
    small = cv2.resize(nuclei, small_size, interpolation=cv2.INTER_AREA)
    small = cv2.morphologyEx((small > 0).view(np.uint8), cv2.MORPH_CLOSE, _disc(5))
    grown = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)
    return grown | nuclei


def _split_touching(lobes: np.ndarray, group: np.ndarray, radius: float) -> list[np.ndarray]:
    """Split a group holding several white cells (distance transform + watershed).

    Every dome of the distance transform of the group's (hole-filled) nuclei at least a red-cell
    radius deep and rising well above the neck to any other (the h-maxima; `_NECK_DEPTH`,
    `_NECK_SHARE`) is a nucleus of its own: a neutrophil's lobes are thinner than a red cell,
    so they raise no such dome. Two or more domes seed a watershed of that distance over the
    group. Without two domes, a single dome with other nucleus pieces apart from it is two
    cells (`_dome_and_rest`), pieces apart that are each a whole nucleus are a cell each
    (`_whole_nuclei_apart`), and nuclei pressed together along a wide front (no neck) may
    still part at two deep concavities of their outline (`_concave_cut`).
    """
    filled = _filled(lobes)
    area, dome_area = cv2.countNonZero(filled), math.pi * (_DOME * radius) ** 2
    if area < dome_area:  # too small for even one dome
        return [lobes]
    distance = _inside_distance(filled)
    neck = max(_NECK_DEPTH * radius, _NECK_SHARE * float(distance.max()))
    markers, n_peaks = _domes(distance, neck, _DOME * radius)
    if n_peaks == 1:
        markers, n_peaks = _dome_and_rest(filled, markers, radius)
    elif area < 2 * dome_area:  # too small for two domes
        return [lobes]
    if n_peaks < 2:
        markers, n_peaks = _whole_nuclei_apart(filled, radius)
    if n_peaks < 2:
        markers, n_peaks = _concave_cut(filled, radius)
    if n_peaks < 2:
        return [lobes]
    parts = watershed(-distance, markers, mask=group > 0)  # the nuclei's own domes decide
    split = [(lobes & (parts == k)).view(np.uint8) for k in range(1, n_peaks + 1)]
    return [part for part in split if cv2.countNonZero(part) > 0]


def _domes(distance: np.ndarray, depth: float, height: float) -> tuple[np.ndarray, int]:
    """Labels of the domes of `distance` rising at least `depth` above every neck to a
    higher one and at least `height` high, and their number. Each dome is its whole cap above
    the neck (the support of the h-dome transform), so a dome with two tips at about the same
    height is one dome; `h_maxima`'s own markers are the tips, which need not touch."""
    caps = distance - reconstruction(distance - depth, distance, method="dilation")
    labels, n = ndi.label(caps > 0, structure=np.ones((3, 3)))
    if n == 0:
        return labels, 0
    index = np.arange(1, n + 1)
    rise = ndi.maximum(caps, labels, index)
    top = ndi.maximum(distance, labels, index)
    kept = index[(rise >= depth * (1 - 1e-5)) & (top >= height)]
    markers = np.zeros(labels.shape, np.int32)
    for k, label in enumerate(kept, start=1):
        markers[labels == label] = k
    return markers, len(kept)


def _dome_and_rest(filled: np.ndarray, dome: np.ndarray, radius: float) -> tuple[np.ndarray, int]:
    """A thick round nucleus (one dome) is a mononuclear cell's whole nucleus, so nucleus pieces
    apart from it (`_APART`), together large enough for a nucleus (`_MIN_NUCLEUS`), are a
    neighbour's (the lobes of a cell touching it). Returns labels (the dome's piece 1, the rest 2) and their
    number, or the dome alone and 1."""
    n, pieces = cv2.connectedComponents(filled, connectivity=8)
    own = np.isin(pieces, np.unique(pieces[dome > 0]))
    rest = (pieces > 0) & ~own
    if n <= 2 or np.count_nonzero(rest) < _MIN_NUCLEUS * math.pi * radius**2:
        return dome, 1
    apart = cv2.distanceTransform((~own).view(np.uint8), cv2.DIST_L2, 3)[rest]
    if apart.min() < _APART * radius:  # a piece of the same nucleus, parted by the threshold
        return dome, 1
    labels = own.astype(np.int32)
    labels[rest] = 2
    return labels, 2


def _whole_nuclei_apart(filled: np.ndarray, radius: float) -> tuple[np.ndarray, int]:
    """Nucleus pieces apart from each other, each as large as a lone nucleus (`_PART_AREA`
    red-cell areas), are nuclei of cells of their own even where they are too thin for a dome
    (blasts whose patchy chromatin the threshold caught in part: `arslan_b35`'s pair, 1.6 and
    1.9 red-cell areas, 0.12 radii apart). A segmented nucleus's lobes are smaller (a SigTuple
    cell's two, 0.8 and 0.9: the lobes of a bilobed cell hold about one red-cell area between
    them). No compactness bound: the filled pieces of a patchy nucleus measure 0.70-0.89 in
    solidity, less under a camera's noise, and a bound from 0 to 0.7 changed no count on the
    sample's 240 versions (`bench_brightfield.py --robustness`). Returns the pieces as labels
    and their number (0 where fewer than two)."""
    n, pieces, stats, _ = cv2.connectedComponentsWithStats(filled, connectivity=8)
    part_area = _PART_AREA * math.pi * radius**2
    whole = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= part_area]
    if len(whole) < 2:
        return np.zeros(filled.shape, np.int32), 0
    markers = np.zeros(filled.shape, np.int32)
    for label, k in enumerate(whole, start=1):
        markers[pieces == k] = label
    return markers, len(whole)


def _concave_cut(filled: np.ndarray, radius: float) -> tuple[np.ndarray, int]:
    """Two nuclei pressed together along a wide front (no neck in the distance transform):
    cut the largest piece along the shortest chord between two deep concavities of its outline
    (convexity defects at least `_CONCAVE_DEPTH` red-cell radii deep) when that leaves two
    compact parts (solidity `_PART_SOLIDITY`), each as large as a lone nucleus (`_PART_AREA`
    red-cell areas). Returns the parts as labels (0 elsewhere) and their number (0 or 2)."""
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    part_area = _PART_AREA * math.pi * radius**2
    none = (np.zeros(filled.shape, np.int32), 0)
    if cv2.contourArea(contour) < 2 * part_area:
        return none
    defects = cv2.convexityDefects(contour, cv2.convexHull(contour, returnPoints=False))
    if defects is None:
        return none
    deep = [
        contour[far, 0]
        for _, _, far, depth in defects.reshape(-1, 4)
        if depth / 256 >= _CONCAVE_DEPTH * radius  # OpenCV's depth is fixed-point, 8 bits
    ]
    best = none
    best_length = math.inf
    for i, first in enumerate(deep):
        for second in deep[i + 1 :]:
            length = math.dist(first, second)
            if length >= best_length:
                continue
            cut = filled.copy()
            cv2.line(cut, tuple(map(int, first)), tuple(map(int, second)), 0, 2)
            n, labels, stats, _ = cv2.connectedComponentsWithStats(cut, connectivity=4)
            big = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= part_area]
            if len(big) == 2 and all(_solidity(labels == k) >= _PART_SOLIDITY for k in big):
                parts = np.zeros(filled.shape, np.int32)
                for label, k in enumerate(big, start=1):
                    parts[labels == k] = label
                best, best_length = (parts, 2), length
    return best


def _solidity(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    return cv2.contourArea(contour) / max(1.0, cv2.contourArea(cv2.convexHull(contour)))


# --- per-cell steps -----------------------------------------------------------------------------


@dataclass
class _Why:
    """Why a cell was kept: its nucleus's lobes, and the nucleus's area in red-cell areas."""

    lobes: str
    nucleus: float

    def joined(self, other: _Why) -> _Why:
        """A lobe or cell taken into this one: its nucleus is this cell's too."""
        return _Why(self.lobes, self.nucleus + other.nucleus)

    def __str__(self) -> str:
        return f"purple nucleus ({self.lobes}), {self.nucleus:.1f} red-cell areas"


def _grow_cell(scene: _Scene, nucleus: _Nucleus) -> tuple[_Component, _Why]:
    """The white cell around a nucleus group: nucleus plus stained cytoplasm, as a component."""
    top, left = nucleus.top, nucleus.left
    h, w = nucleus.pixels.shape
    margin = max(2, round(scene.radius))
    height, width = scene.stain.shape
    y0, x0 = max(0, top - margin), max(0, left - margin)
    y1, x1 = min(height, top + h + margin), min(width, left + w + margin)
    inner = (slice(top - y0, top - y0 + h), slice(left - x0, left - x0 + w))
    core = np.zeros((y1 - y0, x1 - x0), np.uint8)
    core[inner] = nucleus.pixels
    near = cv2.dilate(core, _disc(2 * margin + 1))
    if nucleus.siblings is not None:  # a touching cell's cytoplasm is nearer its own nucleus
        others = np.zeros_like(core)
        others[inner] = nucleus.siblings
        to_core = cv2.distanceTransform(1 - core, cv2.DIST_L2, 3)
        near &= (to_core <= cv2.distanceTransform(1 - others, cv2.DIST_L2, 3)).view(np.uint8)
    cytoplasm = (scene.stain[y0:y1, x0:x1] > scene.low).view(np.uint8) & near
    cytoplasm = cv2.morphologyEx(cytoplasm, cv2.MORPH_OPEN, _disc(3))
    cell = _component_touching(cytoplasm | core, core)
    contours, _ = cv2.findContours(cell, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contour = np.vstack(contours) + np.array([x0, y0], np.int32)
    c_left, c_top, c_w, c_h = cv2.boundingRect(contour)
    pixels = np.zeros((c_h, c_w), np.uint8)
    pixels[:] = cell[c_top - y0 : c_top - y0 + c_h, c_left - x0 : c_left - x0 + c_w]
    component = _Component(
        contour,
        cv2.convexHull(contour),
        c_top,
        c_left,
        c_top + c_h,
        c_left + c_w,
        pixels,
        cv2.countNonZero(pixels),
    )
    n_lobes = cv2.connectedComponents(core)[0] - 1
    lobes = f"{n_lobes} nucleus lobes grouped" if n_lobes > 1 else "one nucleus"
    return component, _Why(lobes, cv2.countNonZero(core) / (math.pi * scene.radius**2))


def _whole_cells(scene: _Scene, groups: list[_Nucleus]):
    """Grown cells larger than a red cell; a cell mostly inside a bigger one's hull (a lobe left
    out of the grouping) joins it. Returns the cells and the reasons for those dropped."""
    grown = [_grow_cell(scene, group) for group in groups]
    grown.sort(key=lambda item: -item[0].area)
    if not scene.measured:  # a crop: touching cells are not split there, so they are one
        grown = _joined_touching(grown)
    red_area = math.pi * scene.radius**2
    kept: list[tuple[_Component, _Why, np.ndarray]] = []
    dropped: list[str] = []
    for cell, reason in grown:
        hull = _filled_hull(cell)
        inside = (
            i
            for i, (big, _, big_hull) in enumerate(kept)
            if _mostly_inside(cell, hull, big, big_hull)
        )
        host = next(inside, None)
        if host is not None:  # part of a bigger cell, already inside its hull and crop
            kept[host] = (kept[host][0], kept[host][1].joined(reason), kept[host][2])
            continue
        cut = _is_cut(scene, cell, hull)  # any part may be visible: its nucleus test suffices
        if cv2.countNonZero(hull) < red_area * (_MIN_CUT_CELL if cut else _MIN_CELL):
            dropped.append("smaller than a red cell (platelet or debris)")
            continue
        kept.append((cell, reason, hull))
    return [(cell, reason) for cell, reason, _ in kept], dropped


def _joined_touching(grown: list[tuple[_Component, _Why]]) -> list[tuple[_Component, _Why]]:
    """Cells whose hulls touch or overlap joined into one (largest first, its lobes kept):
    in a single-cell crop the lobes of one nucleus may lie further apart than the guessed
    scale groups, but their cytoplasm joins them."""
    joined: list[tuple[_Component, _Why, np.ndarray]] = []
    for cell, reason in grown:
        hull = _filled_hull(cell)
        touched = next(
            (i for i, k in enumerate(joined) if _overlap(cell, hull, k[0], k[2], 1) > 0), None
        )
        if touched is None:
            joined.append((cell, reason, hull))
            continue
        merged = _merged(joined[touched][0], cell)  # by position: cells hold arrays, no ==
        joined[touched] = (merged, joined[touched][1].joined(reason), _filled_hull(merged))
    return [(cell, reason) for cell, reason, _ in joined]


def _is_cut(scene: _Scene, cell: _Component, hull: np.ndarray) -> bool:
    """Whether the image border or the black field stop cuts the cell."""
    height, width = scene.stain.shape
    if cell.top == 0 or cell.left == 0 or cell.bottom == height or cell.right == width:
        return True
    return bool(scene.stop[cell.top : cell.bottom, cell.left : cell.right][hull > 0].any())


def _mostly_inside(cell: _Component, hull: np.ndarray, big: _Component, big_hull) -> bool:
    return _overlap(cell, hull, big, big_hull) > 0.5 * cv2.countNonZero(hull)


def _overlap(cell: _Component, hull, other: _Component, other_hull, grow: int = 0) -> int:
    """Pixels of `hull` inside `other_hull` (that grown by `grow` pixels: touching counts)."""
    if grow:
        other_hull = cv2.dilate(
            cv2.copyMakeBorder(other_hull, grow, grow, grow, grow, cv2.BORDER_CONSTANT, value=0),
            np.ones((2 * grow + 1, 2 * grow + 1), np.uint8),
        )
    o_top, o_left = other.top - grow, other.left - grow
    o_bottom, o_right = other.bottom + grow, other.right + grow
    top, left = max(cell.top, o_top), max(cell.left, o_left)
    bottom, right = min(cell.bottom, o_bottom), min(cell.right, o_right)
    if top >= bottom or left >= right:
        return 0
    mine = hull[top - cell.top : bottom - cell.top, left - cell.left : right - cell.left]
    theirs = other_hull[top - o_top : bottom - o_top, left - o_left : right - o_left]
    return cv2.countNonZero(mine & theirs)


def _merged(first: _Component, second: _Component) -> _Component:
    """One component holding both (their pixels on the union of their boxes)."""
    top, left = min(first.top, second.top), min(first.left, second.left)
    bottom, right = max(first.bottom, second.bottom), max(first.right, second.right)
    pixels = np.zeros((bottom - top, right - left), np.uint8)
    for part in (first, second):
        box = (slice(part.top - top, part.bottom - top), slice(part.left - left, part.right - left))
        pixels[box] |= part.pixels
    contour = np.vstack([first.contour, second.contour])
    hull = cv2.convexHull(contour)
    return _Component(contour, hull, top, left, bottom, right, pixels, cv2.countNonZero(pixels))


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected parts of `mask` that overlap `seed`, as 0/1 uint8."""
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[seed > 0])] = True
    keep[0] = False
    return keep[labels].view(np.uint8)


def _result(scene: _Scene, cells, params: SegmentationParams, source: str) -> SegmentationResult:
    """Label image, table (mode "bright", keep_reason, touches_border, nucleus_area_rbc), crops."""
    image = scene.image
    height, width = image.shape[:2]
    labels = np.zeros((height, width), np.int32)
    table = empty_table(len(cells))
    crops = np.zeros((len(cells), params.crop_size, params.crop_size, 3), np.uint8)
    for row, (cell, reason) in enumerate(cells):
        hull_mask = _filled_hull(cell)
        box = (slice(cell.top, cell.bottom), slice(cell.left, cell.right))
        np.copyto(labels[box], row + 1, where=hull_mask.view(bool))
        _fill_row(table, row, image, cell, hull_mask)
        table["touches_border"][row] = _is_cut(scene, cell, hull_mask)
        table["keep_reason"][row] = str(reason)
        if scene.measured:  # a crop's guessed scale makes red-cell areas meaningless
            table["nucleus_area_rbc"][row] = reason.nucleus
        crops[row] = _crop(image, hull_mask, cell.box, params.crop_size)
    table["cell_id"][:] = np.arange(1, len(cells) + 1)
    table["source"][:] = source
    table["mode"][:] = "bright"
    oddity = _sanity_message(table, scene)
    return SegmentationResult(labels, table, crops, oddity, mode="bright", doubtful=oddity)


def _sanity_message(table, scene: _Scene) -> str:
    """Plain words when the result looks wrong: one huge "cell", or far too many."""
    height, width = scene.stain.shape
    if int(table["hull_area"].max()) > 0.5 * height * width and table["hull_area"].size:
        return (
            "one cell covers most of the image: is this really a bright-field image with "
            "stained white cells (or a close-up of one nucleus)?"
        )
    n_cells = len(table["cell_id"])
    looks_like_crop = min(height, width) < 12 * scene.radius
    if looks_like_crop and n_cells > _MANY_CELLS:
        return (
            f"{n_cells} white cells in an image the size of a single-cell crop: the stain or "
            "the background was probably misread"
        )
    return ""


def _nothing_message(rejected: list[str], scene: _Scene) -> str:
    if not rejected:
        found = "nothing in the image is stained purple like a nucleus"
    else:
        found = f"{len(rejected)} purple region(s) rejected ({'; '.join(sorted(set(rejected)))})"
    return f"no white cell found: {found}{_faint_hint(scene)}"


def _faint_hint(scene: _Scene) -> str:
    """Where even the image's bluest pixels fall short of a nucleus's core, the figures and the
    likely cause: a faint stain, glare or a washed-out exposure (bench_brightfield.py's glare
    and stain changes lose whole fields that way), not an image without white cells."""
    stain = scene.stain[::2, ::2]
    stain = stain[stain > 0]  # 0: not valid (stop, black)
    if not stain.size:
        return ""
    core = float(np.percentile(stain, 99.9)) - scene.red_stain
    if core >= _MIN_PEAK_CONTRAST:
        return ""
    return (
        f"; its bluest pixels are {core:.0f} stain levels above its red cells, where a nucleus's"
        f" core needs {_MIN_PEAK_CONTRAST}: if white cells show, their stain is too faint here"
        " (a washed-out exposure or glare? see docs/image-kinds.md)"
    )


# --- small helpers ------------------------------------------------------------------------------


def _otsu(hist: np.ndarray) -> int:
    """Otsu threshold of a 256-bin histogram (pixels above it are the bright class)."""
    levels = np.arange(hist.size, dtype=np.float64)
    weight = np.cumsum(hist, dtype=np.float64)
    total = weight[-1]
    if total == 0:
        return 0
    mass = np.cumsum(hist * levels)
    mean_low = mass / np.maximum(weight, 1)
    mean_high = (mass[-1] - mass) / np.maximum(total - weight, 1)
    between = weight * (total - weight) * (mean_low - mean_high) ** 2
    return int(np.argmax(between))


def _inside_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the nearest pixel outside it, the box's edge counting as
    outside (OpenCV alone treats beyond the edge as inside, which would put domes on the edge)."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    return cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]


def _filled(mask: np.ndarray) -> np.ndarray:
    """0/1 mask with the holes of its parts filled."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, cv2.FILLED)
    return filled


def _disc(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _sample(image: np.ndarray, side: int) -> np.ndarray:
    """Every k-th pixel, at most about `side` a side (nearest neighbour: fast, no blending)."""
    step = -(-max(image.shape[:2]) // side)
    if step <= 1:
        return image
    height, width = image.shape[:2]
    size = (max(1, width // step), max(1, height // step))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
