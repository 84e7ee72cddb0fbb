"""Stage 1 with `--parallel-models`: model-A and model-B side by side on two halves."""

from __future__ import annotations

from typing import Any

from napari_allbag.model.networks import Stage1Model
from napari_allbag.progress import Progress
from napari_allbag.training.batches import CropFeeder
from napari_allbag.training.build import new_stage1_model
from napari_allbag.training.distributed import Distributed, local_batch_size
from napari_allbag.training.loop import StageOutcome


def stage1_side_by_side(
    config, data, dist: Distributed, device, preprocess, workers, subsets, fit_stage1, stage
):
    """`--parallel-models`: model-A on the first half of the processes, model-B on the other.

    Each half trains its model data-parallel among its own processes (with 2 processes: one
    each, no DDP) and its main process writes that model's checkpoint. After every epoch all
    processes exchange a short message, so a half that finished waits in step with the other
    instead of outlasting the timeout. At the end each model is broadcast to every process.
    Returns {name: (model, outcome)}.
    """
    team = dist.split(2)
    leaders = (0, dist.world_size - dist.world_size // 2)
    for size in (dist.world_size - dist.world_size // 2, dist.world_size // 2):
        local_batch_size(config.batch_size, size)  # a clear error when it does not divide
    mine = "stage1-A" if team.members[0] == 0 else "stage1-B"
    stage[0] = mine
    share = team.shard(data.val)
    team_val_feeder = CropFeeder(
        data.cache,
        data.rows[share],
        data.labels[share],
        local_batch_size(config.batch_size, team.world_size),
        device,
        preprocess,
        workers=workers,
    )

    def exchange(done: bool) -> bool:
        messages = dist.all_gather_json({"stage": mine, "done": done}, "stage 1 side by side")
        return all(message["done"] for message in messages)

    try:
        model, outcome = yield from fit_stage1(
            mine,
            subsets[mine],
            team,
            team_val_feeder,
            after_epoch=lambda stage_name, epoch: exchange(False),
        )
    finally:
        team_val_feeder.close()
    other = "stage1-B" if mine == "stage1-A" else "stage1-A"
    while not exchange(True):
        yield Progress(0, None, mine, f"done; waiting for {other} on the other processes")

    found: dict[str, tuple[Stage1Model, StageOutcome]] = {}
    for index, name in enumerate(("stage1-A", "stage1-B")):
        source = leaders[index]
        sending = dist.rank == source
        summary = dist.broadcast_json(
            outcome_to_json(outcome) if sending else None, f"sharing {name}", source
        )
        tensors = dist.broadcast_tensors(
            model.state_dict() if sending else None, f"sharing {name}", source
        )
        if name == mine:
            found[name] = (model, outcome)
            continue
        received = new_stage1_model(config, name, device)
        received.load_state_dict(tensors)
        found[name] = (received, StageOutcome(**summary))
    return found


def outcome_to_json(outcome: StageOutcome) -> dict[str, Any]:
    return {
        "history": outcome.history,
        "best_epoch": outcome.best_epoch,
        "best_val_loss": outcome.best_val_loss,
        "stopped_early": outcome.stopped_early,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "extra": outcome.extra,
    }
