"""The overlay picture: outlines in the class colour, tags with label and confidence, PNG output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from napari_allbag.inference.overlay import (
    CLASS_COLOURS,
    FLAGGED_COLOUR,
    UNKNOWN_COLOUR,
    CellMark,
    draw_overlay,
    marks_from_table,
    write_png,
)
from napari_allbag.segmentation.dark import SegmentationParams, segment_image

SHAPE = (400, 600)
#: (centre x, centre y, radius) of the drawn cells; cell 1 is ALL, cell 2 HEM, cell 3 at the top.
DISCS = ((220, 230, 50), (430, 260, 40), (480, 33, 30))


def drawn_field() -> tuple[np.ndarray, np.ndarray]:
    """A dark image with three purple discs, and its label image (disc k has id k)."""
    image = np.full((*SHAPE, 3), 4, np.uint8)
    labels = np.zeros(SHAPE, np.int32)
    for cell_id, (x, y, r) in enumerate(DISCS, start=1):
        cv2.circle(image, (x, y), r, (90, 40, 110), -1)
        cv2.circle(labels, (x, y), r, cell_id, -1)
    return image, labels


def ring(labels: np.ndarray, cell_id: int, width: int = 1) -> np.ndarray:
    """Pixels on the cell's edge (inside minus eroded inside)."""
    mask = (labels == cell_id).astype(np.uint8)
    inner = cv2.erode(mask, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return (mask - inner).astype(bool)


def colour_fraction(image: np.ndarray, where: np.ndarray, colour) -> float:
    return float(np.all(image[where] == np.array(colour, np.uint8), axis=-1).mean())


MARKS = [CellMark(1, "all", 0.91), CellMark(2, "hem", 0.76), CellMark(3, "all", 0.55)]


def test_outlines_take_the_class_colour_and_the_input_is_untouched():
    image, labels = drawn_field()
    before = image.copy()
    out = draw_overlay(image, labels, MARKS)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)
    assert colour_fraction(out, ring(labels, 1), CLASS_COLOURS["all"]) > 0.8
    assert colour_fraction(out, ring(labels, 2), CLASS_COLOURS["hem"]) > 0.8
    assert colour_fraction(out, ring(labels, 2), CLASS_COLOURS["all"]) == 0
    # the middle of a cell is left as it was
    x, y, _ = DISCS[0]
    np.testing.assert_array_equal(
        out[y - 10 : y + 10, x - 10 : x + 10], image[y - 10 : y + 10, x - 10 : x + 10]
    )


def tag_region(out: np.ndarray, top: int, bottom: int, x: int, half_width: int = 60) -> np.ndarray:
    return out[max(0, top) : bottom, max(0, x - half_width) : x + half_width]


def test_tags_sit_above_the_cell_or_below_it_at_the_top_edge():
    image, labels = drawn_field()
    out = draw_overlay(image, labels, MARKS, legend=False)
    x, y, r = DISCS[0]
    above = tag_region(out, y - r - 40, y - r, x)
    assert np.all(above == CLASS_COLOURS["all"], axis=-1).sum() > 200  # the filled tag box
    x, y, r = DISCS[1]
    above = tag_region(out, y - r - 40, y - r, x)
    assert np.all(above == CLASS_COLOURS["hem"], axis=-1).sum() > 200
    # cell 3 touches nearly the top edge: no room above, so its tag goes below it
    x, y, r = DISCS[2]
    below = tag_region(out, y + r, y + r + 40, x)
    assert np.all(below == CLASS_COLOURS["all"], axis=-1).sum() > 200


def test_tag_text_is_drawn_inside_the_box():
    image, labels = drawn_field()
    plain = draw_overlay(image, labels, [CellMark(1, "hem", None)], legend=False)
    tagged = draw_overlay(image, labels, [CellMark(1, "hem", 0.5)], legend=False)
    x, y, r = DISCS[0]
    # "HEM 0.50" is wider than "HEM": the longer tag covers more of the box colour and text
    plain_box = np.any(tag_region(plain, y - r - 40, y - r, x, 100) != 4, axis=-1).sum()
    tagged_box = np.any(tag_region(tagged, y - r - 40, y - r, x, 100) != 4, axis=-1).sum()
    assert tagged_box > plain_box
    text = tag_region(tagged, y - r - 40, y - r, x, 100)
    assert np.all(text == 0, axis=-1).any()  # black text on the light HEM box


def test_unclassified_cells_get_a_grey_outline_and_their_id():
    image, labels = drawn_field()
    mark = CellMark(2)
    assert mark.text == "#2"
    out = draw_overlay(image, labels, [mark], legend=False)
    assert colour_fraction(out, ring(labels, 2), UNKNOWN_COLOUR) > 0.8
    assert colour_fraction(out, ring(labels, 1), UNKNOWN_COLOUR) == 0


def test_legend_and_caption():
    image, labels = drawn_field()
    with_both = draw_overlay(image, labels, [], caption="demo model, not for diagnosis")
    bare = draw_overlay(image, labels, [], legend=False)
    np.testing.assert_array_equal(bare, image)
    corner = with_both[:60, :60]
    assert np.all(corner == CLASS_COLOURS["all"], axis=-1).sum() > 20
    assert np.all(corner == CLASS_COLOURS["hem"], axis=-1).sum() > 20
    bottom = with_both[-25:]
    assert np.all(bottom > 200, axis=-1).sum() > 15  # white caption text


def test_the_caption_is_one_white_stroke_on_a_dark_panel_even_on_a_pale_smear():
    """A dark rim drawn as a thicker copy of the text drifted from it under OpenCV 5 (glyphs
    widen with the stroke), so a long file name could not be read; now one stroke on a panel."""
    shape = (710, 1316)
    pale = np.full((*shape, 3), 235, np.uint8)
    caption = "sigtuple_test_1468054105.jpg: 3 cell(s)"
    out = draw_overlay(pale, np.zeros(shape, np.int32), [], caption=caption, legend=False)
    band = out[-40:]
    changed = np.any(band != 235, axis=-1)
    rows, cols = np.nonzero(changed)
    box = band[rows.min() :, : cols.max() + 1]
    dark, light = np.all(box < 60, axis=-1), np.all(box > 150, axis=-1)
    assert dark.mean() > 0.5 and light.sum() > 100  # white text on the panel
    assert (dark | light | np.all(np.ptp(box, axis=-1)[..., None] < 8, axis=-1)).all()
    assert not np.any(np.all(out[-40:] == 0, axis=-1))  # no black rim text


def test_a_flagged_cell_is_yellow_with_a_question_mark_and_the_legend_says_so():
    image, labels = drawn_field()
    marks = [CellMark(1, "all", 0.91), CellMark(2, "hem", 0.52, flagged=True)]
    assert [m.text for m in marks] == ["ALL 0.91", "HEM 0.52 ?"]
    out = draw_overlay(image, labels, marks)
    assert colour_fraction(out, ring(labels, 1), CLASS_COLOURS["all"]) > 0.8
    assert colour_fraction(out, ring(labels, 2), FLAGGED_COLOUR) > 0.8
    assert colour_fraction(out, ring(labels, 2), CLASS_COLOURS["hem"]) == 0
    legend = out[:90, :150]  # a third swatch, "? review", only where a cell is flagged
    unflagged = draw_overlay(image, labels, marks[:1])[:90, :150]
    assert np.all(legend == FLAGGED_COLOUR, axis=-1).sum() > 20
    assert np.all(unflagged == FLAGGED_COLOUR, axis=-1).sum() == 0


def test_the_legend_has_a_dark_panel_so_it_reads_on_a_pale_smear():
    pale = np.full((*SHAPE, 3), 235, np.uint8)
    out = draw_overlay(pale, np.zeros(SHAPE, np.int32), [])
    panel = np.all(out < 60, axis=-1)
    assert panel[:20, :30].mean() > 0.5  # the corner is dark behind the key
    rows, cols = np.nonzero(panel)
    inside = out[: rows.max(), : cols.max()]  # the panel's box: dark, swatches, white names
    assert np.all(inside > 150, axis=-1).sum() > 15  # the class names, light on dark


def test_marks_from_a_segmentation_table():
    image, _ = drawn_field()
    result = segment_image(image, SegmentationParams(crop_size=32, erosion_size=1))
    assert result.n_cells == 3
    marks = marks_from_table(result.table, ["all", "hem", "all"], [0.9, 0.8, 0.7])
    assert [m.cell_id for m in marks] == list(result.table["cell_id"])
    for row, mark in enumerate(marks):
        assert mark.bbox == (
            int(result.table["bbox_min_row"][row]),
            int(result.table["bbox_min_col"][row]),
            int(result.table["bbox_max_row"][row]),
            int(result.table["bbox_max_col"][row]),
        )
    # a box from the table and a box found in the label image draw the same picture
    found = [CellMark(m.cell_id, m.label, m.confidence) for m in marks]
    np.testing.assert_array_equal(
        draw_overlay(image, result.labels, marks), draw_overlay(image, result.labels, found)
    )
    assert marks_from_table(result.table)[0].label is None


def test_cells_missing_from_the_labels_are_skipped():
    image, labels = drawn_field()
    out = draw_overlay(image, labels, [CellMark(9, "all", 0.9)], legend=False)
    np.testing.assert_array_equal(out, image)


def test_bad_inputs_are_refused_clearly():
    image, labels = drawn_field()
    with pytest.raises(ValueError, match="differ in size"):
        draw_overlay(image, labels[:-1], MARKS)
    with pytest.raises(ValueError, match="uint8 RGB"):
        draw_overlay(image[..., 0], labels, MARKS)


def test_write_png_round_trip(tmp_path):
    image, labels = drawn_field()
    out = draw_overlay(image, labels, MARKS)
    path = write_png(tmp_path / "overlay.png", out)
    assert path == tmp_path / "overlay.png"
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]  # no temporary left
    read = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read, out)


def test_tags_of_neighbouring_cells_do_not_cover_each_other():
    """In a dense field the tag above a cell covered its neighbour's: now a tag moves (below,
    beside) to where it covers none drawn before, and each stays whole."""
    image = np.full((*SHAPE, 3), 4, np.uint8)
    labels = np.zeros(SHAPE, np.int32)
    for cell_id, x in ((1, 290), (2, 326)):  # tags wider than the 36 px between the centres
        cv2.circle(labels, (x, 200), 12, cell_id, -1)
    marks = [CellMark(1, "all", 0.91), CellMark(2, "hem", 0.76)]
    both = draw_overlay(image, labels, marks, legend=False)
    for mark in marks:
        alone = draw_overlay(image, labels, [mark], legend=False)
        off_outline = ~cv2.dilate(ring(labels, mark.cell_id).view(np.uint8), np.ones((5, 5))).view(
            bool
        )
        in_colour = [
            np.all(picture == np.array(mark.colour, np.uint8), axis=-1) & off_outline
            for picture in (alone, both)
        ]
        assert in_colour[0].sum() > 200  # the tag's filled box
        assert in_colour[1].sum() == in_colour[0].sum(), mark.label  # all of it shows
