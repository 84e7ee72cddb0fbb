"""training.stage1: what one side of `--parallel-models` hands the other about its stage.

Training model-A and model-B side by side needs two processes: tests/training/test_distributed.py
runs it under torchrun and compares it with one process."""

from __future__ import annotations

import json

from napari_allbag.training.loop import StageOutcome
from napari_allbag.training.stage1 import outcome_to_json


def test_a_stage_outcome_survives_json_whole():
    outcome = StageOutcome(
        history=[{"stage": "stage1-B", "epoch": 1, "val_loss": 0.7, "lr": 1e-3}],
        best_epoch=1,
        best_val_loss=0.7,
        stopped_early=True,
        resumed_from_epoch=0,
        extra={"last_epoch": 1},
    )
    received = StageOutcome(**json.loads(json.dumps(outcome_to_json(outcome))))
    assert received == outcome
    assert set(outcome_to_json(outcome)) == set(StageOutcome.__dataclass_fields__)
