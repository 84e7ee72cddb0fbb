"""Stage 1 with `--parallel-models`: model-A and model-B side by side on two halves."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import torch

from napari_allbag.model.networks import Stage1Model
from napari_allbag.progress import Progress
from napari_allbag.training.build import new_stage1_model
from napari_allbag.training.config import TrainConfig
from napari_allbag.training.distributed import Distributed, local_batch_size
from napari_allbag.training.loop import StageOutcome

STAGE1 = ("stage1-A", "stage1-B")


@dataclass(frozen=True)
class SideBySide:
    """`--parallel-models`: model-A on the first half of the processes, model-B on the other.

    Each half trains its model data-parallel among its own processes (with 2 processes: one
    each, no DDP) and its main process writes that model's checkpoint. After every epoch all
    processes exchange a short message (`after_epoch`), so a half that finished waits in step
    with the other instead of outlasting the timeout. At the end each model is broadcast to
    every process (`share_models`).
    """

    dist: Distributed  # all processes
    team: Distributed  # this process's half
    mine: str  # the stage this half trains

    @classmethod
    def split(cls, config: TrainConfig, dist: Distributed) -> SideBySide:
        """This process's half (a clear error when the batch does not divide over a half)."""
        team = dist.split(2)
        for size in (dist.world_size - dist.world_size // 2, dist.world_size // 2):
            local_batch_size(config.batch_size, size)
        return cls(dist, team, STAGE1[0] if team.members[0] == 0 else STAGE1[1])

    @property
    def other(self) -> str:
        return STAGE1[1] if self.mine == STAGE1[0] else STAGE1[0]

    @property
    def leaders(self) -> tuple[int, int]:
        """The global ranks of the two halves' main processes."""
        return (0, self.dist.world_size - self.dist.world_size // 2)

    def exchange(self, done: bool) -> bool:
        """Tell every process whether this half is done; True when both halves are."""
        messages = self.dist.all_gather_json(
            {"stage": self.mine, "done": done}, "stage 1 side by side"
        )
        return all(message["done"] for message in messages)

    def after_epoch(self, stage: str, epoch: int) -> None:
        """A stage's `after_epoch` hook: the exchange of a half still training."""
        self.exchange(False)

    def wait_for_the_other(self) -> Generator[Progress, None, None]:
        while not self.exchange(True):
            yield Progress(
                0, None, self.mine, f"done; waiting for {self.other} on the other processes"
            )

    def share_models(
        self, model: Stage1Model, outcome: StageOutcome, config: TrainConfig, device: torch.device
    ) -> dict[str, tuple[Stage1Model, StageOutcome]]:
        """Both halves' models and outcomes on every process: {name: (model, outcome)}."""
        found: dict[str, tuple[Stage1Model, StageOutcome]] = {}
        for name, source in zip(STAGE1, self.leaders, strict=True):
            sending = self.dist.rank == source
            summary = self.dist.broadcast_json(
                outcome_to_json(outcome) if sending else None, f"sharing {name}", source
            )
            tensors = self.dist.broadcast_tensors(
                model.state_dict() if sending else None, f"sharing {name}", source
            )
            if name == self.mine:
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
