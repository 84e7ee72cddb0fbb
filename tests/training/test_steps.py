"""training.steps: every event of a run carries its numbered step, said in words."""

from __future__ import annotations

from napari_allbag.progress import Progress
from napari_allbag.training.steps import (
    CACHE,
    SEGMENT,
    STEP_COUNT,
    STEP_NAMES,
    TRAIN,
    numbered,
    step_event,
    step_text,
)


def test_steps_before_training_say_their_message_with_the_count():
    assert STEP_COUNT == len(STEP_NAMES) == 5
    event = step_event(SEGMENT, "segmenting 120/400", 120, 400)
    assert (event.stage, event.done, event.total) == ("preprocess", 120, 400)
    assert step_text(event) == "Step 2 of 5: segmenting 120/400"
    assert step_text(step_event(CACHE, "")) == "Step 3 of 5: caching crops"


def test_training_events_keep_their_stage_and_a_marked_step_is_kept():
    event = numbered(TRAIN)(Progress(3, 10, "stage1-B", "epoch 2/5", {"loss": 0.5}))
    assert event.metrics == {"loss": 0.5, "step": TRAIN, "steps": STEP_COUNT}
    assert step_text(event) == "Step 5 of 5: Stage 1: model-B — epoch 2/5"
    assert numbered(TRAIN)(step_event(CACHE, "x")).metrics["step"] == CACHE


def test_an_event_without_a_step_says_its_stage():
    assert step_text(Progress(0, None, "stage2", "rank 0: working")) == (
        "Stage 2: combined model — rank 0: working"
    )
    assert step_text(Progress(0, None, "other")) == "other"
