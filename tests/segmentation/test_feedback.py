"""segmentation.feedback: per-image warnings in words and the summary line's counts."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, replace

import numpy as np

from napari_allbag.segmentation.dark import SegmentationParams, segment_image
from napari_allbag.segmentation.feedback import FeedbackTally, ImageFeedback
from tests.drawn_cells import FIELD_CELLS, field

PARAMS = SegmentationParams(crop_size=64)


def test_a_good_segmentation_says_nothing():
    feedback = ImageFeedback.of(segment_image(field(), PARAMS))
    assert feedback.n_cells == len(FIELD_CELLS)
    assert feedback.warnings() == [] and feedback.line("f.png") is None
    assert pickle.loads(pickle.dumps(feedback)) == feedback  # travels from worker processes


def test_no_cell_is_said_with_the_segmentations_reason():
    result = segment_image(np.zeros((64, 64, 3), np.uint8), PARAMS)
    feedback = replace(ImageFeedback.of(result), mode="dark")
    assert feedback.n_cells == 0
    line = feedback.line("black.png")
    assert line.startswith("black.png: dark background (set): no cell found")
    bright = replace(feedback, mode="bright", auto=True, message="no white cell found: too pale")
    assert bright.warnings() == ["no white cell found (too pale)"]
    assert bright.mode_text == "bright-field (auto)"


def test_the_tally_counts_each_kind_once_per_image():
    good = ImageFeedback(mode="bright", auto=True, n_cells=4)
    guessed = replace(good, guessed="few dark pixels")
    doubtful = replace(good, doubtful="one cell covers the field")
    empty = replace(good, n_cells=0)
    tally = FeedbackTally()
    assert not tally.warned
    for feedback in (good, guessed, doubtful, empty):
        tally.add(feedback)
    assert tally.images == 4 and tally.warned
    assert tally.text() == (
        "4 images: bright-field (auto); 1 with the background guessed, "
        "1 with no white cell found, 1 doubtful segmentation: see the warnings above"
    )
    assert "pass --background dark or bright" in guessed.warnings()[0]
    mixed = FeedbackTally()
    mixed.add(good)
    mixed.add(ImageFeedback(mode="dark", n_cells=1))
    assert mixed.text() == "2 images: 1 bright-field (auto), 1 dark background (set)"


def test_cells_with_a_small_nucleus_are_named_and_counted():
    table = {
        "cell_id": np.array([1, 2, 3]),
        "nucleus_area_rbc": np.array([2.1, 0.4, np.nan]),  # NaN: not measured, no warning
    }
    result = type("Result", (), {"table": table, "mode": "bright"})()
    feedback = ImageFeedback.of(result)
    assert feedback.small_nuclei == (2,)
    assert feedback.warnings() == [
        "cell 2: nucleus smaller than a red cell (a platelet clump, red cells overlapping or a "
        "faint nucleus?), check before trusting"
    ]
    assert pickle.loads(pickle.dumps(feedback)) == feedback
    stored = json.loads(json.dumps(asdict(feedback)))  # as a crop cache's index keeps it
    assert ImageFeedback(**stored) == feedback
    tally = FeedbackTally()
    tally.add(feedback)
    tally.add(replace(feedback, small_nuclei=(4, 5)))
    assert tally.warned and tally.text() == (
        "2 images: bright-field (set); 3 cells with a small nucleus: see the warnings above"
    )
