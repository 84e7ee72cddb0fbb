"""The steps of a training run as the user is told them: "Step 2 of 5: segmenting 120/400".

Before the first epoch a run scans the annotated folder, segments every image, caches the crops
(and splits them by subject), and builds the models; these take from seconds to many minutes,
so each is a numbered step, and the fifth, training, holds the stages and the report. Every
`Progress` that `training.run.train` yields carries its step in its metrics (`step`, `steps`);
`step_text` says it in words for the Train widget and the CLI alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from napari_allbag.progress import Progress

SCAN, SEGMENT, CACHE, BUILD, TRAIN = 1, 2, 3, 4, 5
#: What each step is called, in order (step k is STEP_NAMES[k - 1]).
STEP_NAMES = ("scanning", "segmenting", "caching crops", "building the models", "training")
STEP_COUNT = len(STEP_NAMES)

#: The training stages in words (the `Progress.stage` of `training.run.train`).
STAGE_NAMES = {
    "preprocess": "Preprocessing",
    "stage1-A": "Stage 1: model-A",
    "stage1-B": "Stage 1: model-B",
    "features": "Stage 2: features",
    "stage2": "Stage 2: combined model",
    "report": "Report",
}


def numbered(step: int) -> Callable[[Progress], Progress]:
    """A function that marks an event as one of step `step` (for `progress.retold`); an event
    already marked keeps its step."""

    def mark(event: Progress) -> Progress:
        if "step" in event.metrics:
            return event
        return replace(event, metrics={**event.metrics, "step": step, "steps": STEP_COUNT})

    return mark


def step_event(step: int, message: str, done: int = 0, total: int | None = None) -> Progress:
    """A 'preprocess' event of step `step` (the steps before the first epoch)."""
    return numbered(step)(Progress(done, total, "preprocess", message))


def step_text(event: Progress) -> str:
    """The event in words: "Step 2 of 5: segmenting 120/400" before training, "Step 5 of 5:
    Stage 1: model-A — epoch 3/50" while it trains; the stage and message without a step."""
    step = event.metrics.get("step")
    stage = STAGE_NAMES.get(event.stage, event.stage)
    if not isinstance(step, int):
        return f"{stage} — {event.message}" if event.message else stage
    text = f"Step {step} of {event.metrics.get('steps', STEP_COUNT)}: "
    if step == TRAIN:
        return text + (f"{stage} — {event.message}" if event.message else stage)
    return text + (event.message or STEP_NAMES[step - 1])
