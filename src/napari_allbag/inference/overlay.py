"""The overlay picture: each cell's outline in its class colour, with its label and confidence.

`draw_overlay` returns a new RGB uint8 image (the input is never changed); `write_png` saves it
atomically. Drawn with OpenCV so it works headless (CLI, CI) and from any thread. The colours are
the Classify widget's: ALL orange-red, HEM sky blue (told apart by colour-blind eyes too), a cell
flagged for review yellow with a "?" after its confidence; a cell without a class is outlined in
grey. `OverlayWriter` is `predict --overlays DIR`: one such picture per image of a run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from napari_allbag.io.atomic import write_bytes_atomic

#: RGB colour of each class (the Classify widget's ALL_COLOUR / HEM_COLOUR, 0-255).
CLASS_COLOURS = {"all": (237, 84, 13), "hem": (38, 158, 242)}
UNKNOWN_COLOUR = (170, 170, 170)
FLAGGED_COLOUR = (255, 217, 26)  # the Classify widget's FLAGGED_COLOUR
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class CellMark:
    """What to draw for one cell of a label image.

    label: 'all', 'hem' or None (not classified: grey outline, id only).
    confidence: the ensemble's winning probability, shown beside the label.
    bbox: (min_row, min_col, max_row, max_col), max exclusive, as in the segmentation table;
        found from the label image when None.
    flagged: flagged for review (yellow, "?" after the text).
    """

    cell_id: int
    label: str | None = None
    confidence: float | None = None
    bbox: tuple[int, int, int, int] | None = None
    flagged: bool = False

    @property
    def text(self) -> str:
        if self.label is None:
            return f"#{self.cell_id}"
        mark = " ?" if self.flagged else ""
        if self.confidence is None:
            return self.label.upper() + mark
        return f"{self.label.upper()} {self.confidence:.2f}{mark}"

    @property
    def colour(self) -> tuple[int, int, int]:
        if self.flagged:
            return FLAGGED_COLOUR
        return CLASS_COLOURS.get(str(self.label).lower(), UNKNOWN_COLOUR)


def marks_from_table(
    table: dict[str, np.ndarray],
    labels: Sequence[str] | np.ndarray | None = None,
    confidence: Sequence[float] | np.ndarray | None = None,
    flagged: Sequence[bool] | np.ndarray | None = None,
) -> list[CellMark]:
    """One `CellMark` per row of a segmentation table (cell_id and bbox_* columns)."""
    ids = np.asarray(table["cell_id"]).astype(np.int64)
    marks = []
    for row, cell_id in enumerate(ids):
        box = (
            tuple(
                int(table[name][row])
                for name in ("bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")
            )
            if "bbox_min_row" in table
            else None
        )
        marks.append(
            CellMark(
                int(cell_id),
                None if labels is None else str(labels[row]),
                None if confidence is None else float(confidence[row]),
                box,
                False if flagged is None else bool(flagged[row]),
            )
        )
    return marks


def _scale(shape: tuple[int, ...]) -> tuple[float, int]:
    """Font scale and line thickness that read well at this image size."""
    side = min(shape[0], shape[1])
    font_scale = float(np.clip(side / 1024 * 0.8, 0.35, 3.0))
    return font_scale, max(2, round(font_scale * 2.5))


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = background
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b >= 128 else (255, 255, 255)


def _box_of(labels: np.ndarray, mark: CellMark) -> tuple[int, int, int, int] | None:
    if mark.bbox is not None:
        top, left, bottom, right = mark.bbox
        height, width = labels.shape
        return max(0, top), max(0, left), min(height, bottom), min(width, right)
    rows, cols = np.nonzero(labels == mark.cell_id)
    if rows.size == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _outline(canvas: np.ndarray, labels: np.ndarray, mark: CellMark, box, thickness: int) -> None:
    top, left, bottom, right = box
    region = labels[top:bottom, left:right] == mark.cell_id
    if not region.any():
        return
    mask = np.zeros((region.shape[0] + 2, region.shape[1] + 2), np.uint8)
    mask[1:-1, 1:-1] = region
    contours, _ = cv2.findContours(
        mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(left - 1, top - 1)
    )
    cv2.drawContours(canvas, contours, -1, mark.colour, thickness, lineType=cv2.LINE_8)


def _tag_spots(box, size, shape, thickness) -> list[tuple[int, int]]:
    """Where a tag of `size` (w, h) may go around a cell's box, best first: above, below, then
    to the right and to the left (each kept inside the image)."""
    (box_w, box_h), (height, width) = size, shape[:2]
    top, left, bottom, right = box
    centre_x, centre_y = (left + right) // 2 - box_w // 2, (top + bottom) // 2 - box_h // 2
    spots = [
        (centre_x, top - thickness - box_h),
        (centre_x, bottom + thickness),
        (right + thickness, centre_y),
        (left - thickness - box_w, centre_y),
    ]
    if spots[0][1] < 0:  # no room above: below first
        spots[0], spots[1] = spots[1], spots[0]
    return [
        (int(np.clip(x, 0, max(0, width - box_w))), int(np.clip(y, 0, max(0, height - box_h))))
        for x, y in spots
    ]


def _overlap(spot, size, taken: list[tuple[int, int, int, int]]) -> int:
    """Pixels a rectangle at `spot` of `size` shares with the rectangles (x, y, w, h) taken."""
    x, y = spot
    w, h = size
    return sum(
        max(0, min(x + w, tx + tw) - max(x, tx)) * max(0, min(y + h, ty + th) - max(y, ty))
        for tx, ty, tw, th in taken
    )


def _tag(canvas: np.ndarray, text: str, colour, box, style, taken: list) -> None:
    """The text in a filled box of the class colour, above the cell, or where it covers no tag
    drawn before (`taken`, which it joins): in a dense field the tags of neighbours overlapped."""
    font_scale, thickness = style
    text_thickness = max(1, thickness // 2)
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, text_thickness)
    pad = max(2, text_h // 4)
    size = (text_w + 2 * pad, text_h + baseline + 2 * pad)
    spots = _tag_spots(box, size, canvas.shape, thickness)
    x, y = min(spots, key=lambda spot: _overlap(spot, size, taken))  # the first of the least
    taken.append((x, y, *size))
    cv2.rectangle(canvas, (x, y), (x + size[0] - 1, y + size[1] - 1), colour, cv2.FILLED)
    cv2.putText(
        canvas,
        text,
        (x + pad, y + pad + text_h),
        _FONT,
        font_scale,
        _text_colour(colour),
        text_thickness,
        cv2.LINE_AA,
    )


def _legend_layout(font_scale: float, thickness: int, flagged: bool):
    """The legend's entries (name, colour), text height, padding, swatch side and panel size."""
    text_thickness = max(1, thickness // 2)
    entries = [("ALL", CLASS_COLOURS["all"]), ("HEM", CLASS_COLOURS["hem"])]
    if flagged:
        entries.append(("? review", FLAGGED_COLOUR))
    (_, text_h), baseline = cv2.getTextSize("ALL", _FONT, font_scale, text_thickness)
    pad = max(3, text_h // 3)
    swatch = text_h + baseline
    widest = max(cv2.getTextSize(t, _FONT, font_scale, text_thickness)[0][0] for t, _ in entries)
    panel = (2 * pad + swatch + pad + widest, pad + len(entries) * (swatch + pad))
    return entries, text_h, pad, swatch, panel


def _legend_size(font_scale: float, thickness: int, flagged: bool) -> tuple[int, int]:
    """Width and height of the legend's panel (tags keep clear of it)."""
    return _legend_layout(font_scale, thickness, flagged)[-1]


def _legend(canvas: np.ndarray, font_scale: float, thickness: int, flagged: bool) -> None:
    """A key in the top-left corner on a dark panel (readable on a pale smear too): a swatch
    and the name of each class, and of "review" where a cell is flagged."""
    text_thickness = max(1, thickness // 2)
    entries, text_h, pad, swatch, panel = _legend_layout(font_scale, thickness, flagged)
    cv2.rectangle(canvas, (0, 0), panel, (30, 30, 30), cv2.FILLED)
    x, y = pad, pad
    for name, colour in entries:
        cv2.rectangle(canvas, (x, y), (x + swatch, y + swatch), colour, cv2.FILLED)
        cv2.putText(
            canvas,
            name,
            (x + swatch + pad, y + text_h),
            _FONT,
            font_scale,
            (255, 255, 255),
            text_thickness,
            cv2.LINE_AA,
        )
        y += swatch + pad


def _caption(canvas: np.ndarray, text: str, font_scale: float, thickness: int) -> None:
    """A line of white text on a dark panel along the bottom edge, shrunk to fit the width.

    One stroke on a panel, like the legend: a dark rim drawn as the same text with a thicker
    stroke no longer lines up under OpenCV 5, whose glyphs grow wider with the stroke (at 0.44
    and stroke 1 the caption of a 1316 px overlay was 256 px wide, with stroke 3 266 px: the
    two strings drifted apart and the name could not be read)."""
    height, width = canvas.shape[:2]
    text_thickness = max(1, thickness // 2)
    scale = font_scale * 0.8
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, text_thickness)
    if text_w > width - 8:
        scale *= (width - 8) / text_w
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, text_thickness)
    pad = max(2, text_h // 4)
    top = max(0, height - text_h - baseline - 2 * pad)
    cv2.rectangle(canvas, (0, top), (min(width, text_w + 2 * pad + 4), height), (30, 30, 30), -1)
    origin = (pad + 2, height - baseline - pad)
    cv2.putText(canvas, text, origin, _FONT, scale, (255, 255, 255), text_thickness, cv2.LINE_AA)


def draw_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    marks: Sequence[CellMark],
    caption: str = "",
    legend: bool = True,
) -> np.ndarray:
    """`image` (HxWx3 uint8 RGB) with each marked cell of `labels` (HxW ids) outlined and tagged.

    Returns a new image; `caption` (e.g. where the model comes from) goes along the bottom edge.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got {image.dtype} {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(
            f"labels {labels.shape} and image {image.shape[:2]} differ in size; "
            "give the label image the segmentation made of this image"
        )
    canvas = np.ascontiguousarray(image).copy()
    font_scale, thickness = _scale(image.shape)
    boxes = [_box_of(labels, mark) for mark in marks]
    for mark, box in zip(marks, boxes, strict=True):
        if box is not None:
            _outline(canvas, labels, mark, box, thickness)
    flagged = any(mark.flagged for mark in marks)
    taken = [(0, 0, *_legend_size(font_scale, thickness, flagged))] if legend else []
    for mark, box in zip(marks, boxes, strict=True):  # tags last, so no outline crosses them
        if box is not None:
            _tag(canvas, mark.text, mark.colour, box, (font_scale, thickness), taken)
    if legend:
        _legend(canvas, font_scale, thickness, flagged)
    if caption:
        _caption(canvas, caption, font_scale, thickness)
    return canvas


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Save an RGB uint8 image as PNG atomically (`io.atomic`; `OutputError` on failure)."""
    path = Path(path)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - encoding a uint8 RGB array does not fail
        raise OSError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, encoded.tobytes(), mode=None, sync=False)
    return path


class OverlayWriter:
    """`predict --overlays DIR`: keeps each image's label image as the segmentation stream
    passes it on, then writes the image with its cells outlined and tagged (`draw_overlay`) as
    `<nnnnn>_<file stem>.png`, nnnnn the file's position in the run (two folders may hold the
    same name). The image is read again from its file (the stream does not keep it)."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.labels: dict[str, np.ndarray] = {}
        self.files = self.written = 0

    def keep(self, item) -> None:
        """Remember a segmentation stream item's label image (none for an unreadable file)."""
        labels = getattr(getattr(item, "result", None), "labels", None)
        if labels is not None:
            self.labels[str(item.path)] = labels

    def write(self, result) -> Path | None:
        """The overlay of one `FilePredictions` (None: the file was unreadable, on the first
        read or on this second one)."""
        from napari_allbag.io.images import ImageReadError, read_image

        labels = self.labels.pop(str(result.path), None)
        self.files += 1
        if labels is None or result.error:
            return None
        try:
            image = read_image(result.path)
        except (ImageReadError, OSError):
            return None
        predictions = result.predictions
        marks = marks_from_table(
            result.table, predictions.label_names, predictions.confidence, predictions.flagged
        )
        picture = draw_overlay(image, labels, marks, f"{result.path.name}: {len(marks)} cell(s)")
        self.written += 1
        return write_png(self.out_dir / f"{self.files:05d}_{result.path.stem}.png", picture)
