"""One training stage: epochs of batches, validation, the paper's schedule, a checkpoint per epoch.

`fit_stage` trains any module (a stage-1 model, the combined head on cached features, or the whole
combined model) the same way: RMSprop with Keras 2.2.4's defaults, cross entropy (optionally
class-weighted), `PlateauSchedule` on validation loss, the best weights kept. It is a generator of
`Progress` events (one per batch, one per epoch) and returns a `StageOutcome`.

Reproducible and resumable: every epoch starts from a seed derived from (run seed, stage, epoch),
which drives the batch order, the augmentation and dropout; the checkpoint after each epoch holds
the weights, the best weights, the optimizer, the schedule and the history. Resuming from the
checkpoint of epoch N therefore gives exactly the run that was not interrupted.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_allbag.checkpoint import (
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    save_checkpoint,
    unprefixed,
)
from napari_allbag.progress import Progress
from napari_allbag.train_schedule import PlateauSchedule

#: Keras 2.2.4 RMSprop defaults (the paper's "all the settings default"); torch calls rho alpha.
KERAS_RMSPROP = {"alpha": 0.9, "eps": 1e-7}

#: On a GPU, read the running loss and accuracy (a device sync) every this many batches.
SYNC_EVERY = 10

#: A batch: model inputs (one tensor or a tuple of tensors) and class labels, on the device.
Batch = tuple[Any, torch.Tensor]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and a path of names/numbers, e.g. (seed, 'stage1-A', 3)."""
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def make_rmsprop(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.RMSprop:
    """RMSprop with Keras 2.2.4's defaults (rho 0.9, epsilon 1e-7), not PyTorch's."""
    return torch.optim.RMSprop(parameters, lr=lr, **KERAS_RMSPROP)


@dataclass
class EpochRandom:
    """An epoch's random streams: batch order (CPU) and augmentation (on the training device)."""

    order: torch.Generator
    augment: torch.Generator

    @classmethod
    def for_epoch(cls, seed: int, stage: str, epoch: int, device: torch.device) -> EpochRandom:
        order = torch.Generator().manual_seed(derive_seed(seed, stage, epoch, "order"))
        augment = torch.Generator(device=device if device.type == "cuda" else "cpu")
        augment.manual_seed(derive_seed(seed, stage, epoch, "augment"))
        return cls(order, augment)


@dataclass
class StageSpec:
    """What `fit_stage` trains and on what.

    `train_batches(epoch, random)` gives the epoch's batches (order and augmentation drawn from
    the `EpochRandom` generators); `val_batches()` the validation batches; `forward(model,
    inputs)` the logits.
    """

    name: str
    model: nn.Module
    train_batches: Callable[[int, EpochRandom], Iterable[Batch]]
    val_batches: Callable[[], Iterable[Batch]]
    n_train_batches: int
    forward: Callable[[nn.Module, Any], torch.Tensor]
    parameters: list[nn.Parameter] | None = None
    class_weights: torch.Tensor | None = None


@dataclass
class StageSettings:
    """Schedule, precision and where checkpoints go."""

    epochs: int
    lr: float
    patience_lr: int
    patience_stop: int
    seed: int
    device: torch.device
    checkpoint_dir: Path
    is_main_process: bool = True
    autocast_dtype: torch.dtype | None = None
    on_epoch_end: Callable[[list[dict[str, Any]]], None] | None = None


@dataclass
class StageOutcome:
    """The finished stage: best weights (loaded into the model), history rows, best epoch."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """A fresh autocast context for `dtype` on `device` (a no-op context for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _forward_loss(spec: StageSpec, inputs, labels, weights, settings: StageSettings):
    with autocast_context(settings.device, settings.autocast_dtype):
        logits = spec.forward(spec.model, inputs)
    logits = logits.float()
    return logits, F.cross_entropy(logits, labels, weight=weights)


class RunningMetrics:
    """Sums of (weighted) loss and correct predictions, kept on the device.

    Reading them (`loss`, `accuracy`) waits for the device, so the training loop reads them only
    every few batches on a GPU and lets the device run ahead in between.
    """

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.weight_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weights=None):
        """`losses` per cell (or their mean, then weighted by the batch size)."""
        n = len(labels)
        cell_weights = weights[labels] if weights is not None else None
        if losses.ndim == 0:
            self.loss_sum += losses.double() * n
            self.weight_sum += n
        elif cell_weights is not None:
            self.loss_sum += (losses * cell_weights).double().sum()
            self.weight_sum += cell_weights.double().sum()
        else:
            self.loss_sum += losses.double().sum()
            self.weight_sum += n
        self.correct += (logits.argmax(dim=1) == labels).double().sum()
        self.count += n

    @property
    def loss(self) -> float:
        return float(self.loss_sum / self.weight_sum) if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return float(self.correct) / self.count if self.count else float("nan")


def evaluate(
    spec: StageSpec, settings: StageSettings, event: Progress | None = None
) -> Generator[Progress, None, tuple[float, float]]:
    """Validation loss (mean over cells, weighted like training) and accuracy.

    Yields `event` after each batch, so that a cancel never waits for a whole validation pass.
    """
    spec.model.eval()
    weights = spec.class_weights.to(settings.device) if spec.class_weights is not None else None
    metrics = RunningMetrics(settings.device)
    for inputs, labels in spec.val_batches():
        with torch.no_grad(), autocast_context(settings.device, settings.autocast_dtype):
            logits = spec.forward(spec.model, inputs).float()
            losses = F.cross_entropy(logits, labels, reduction="none")
            metrics.add(losses, logits, labels, weights)
        if event is not None:
            yield event
    if metrics.count == 0:
        raise ValueError("the validation set is empty")
    return metrics.loss, metrics.accuracy


def fit_stage(spec: StageSpec, settings: StageSettings) -> Iterator[Progress]:
    """Train `spec.model` for one stage (see module doc); returns a `StageOutcome`.

    Written as a generator: closing it (or an exception) stops within one batch; the checkpoint of
    the last finished epoch stays on disk.
    """
    device = settings.device
    model = spec.model
    parameters = (
        spec.parameters
        if spec.parameters is not None
        else [p for p in model.parameters() if p.requires_grad]
    )
    optimizer = make_rmsprop(parameters, settings.lr)
    schedule = PlateauSchedule(
        lr=settings.lr, patience_lr=settings.patience_lr, patience_stop=settings.patience_stop
    )
    scaler = _grad_scaler(device, settings.autocast_dtype)
    weights = spec.class_weights.to(device) if spec.class_weights is not None else None
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch = 1

    saved = load_checkpoint(settings.checkpoint_dir, spec.name)
    if saved is not None:
        tensors, state = saved
        history = list(state["history"])
        schedule = PlateauSchedule.from_dict(state["schedule"])
        best = unprefixed("best", tensors)
        best_state = {k: v.to(device) for k, v in best.items()} if best else None
        if state.get("finished"):
            model.load_state_dict(
                best_state if best_state is not None else unprefixed("model", tensors)
            )
            yield Progress(
                settings.epochs,
                settings.epochs,
                spec.name,
                "finished earlier (resumed)",
                {"epoch": state["epoch"]},
            )
            return _outcome(history, schedule, state["epoch"], resumed=state["epoch"])
        model.load_state_dict(unprefixed("model", tensors))
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"]) + 1
    resumed_from = start_epoch - 1

    n_batches = max(1, spec.n_train_batches)
    sync_every = 1 if device.type == "cpu" else SYNC_EVERY
    total = settings.epochs * n_batches
    for epoch in range(start_epoch, settings.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr
        started = time.perf_counter()
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(derive_seed(settings.seed, spec.name, epoch, "torch"))
            random = EpochRandom.for_epoch(settings.seed, spec.name, epoch, device)
            model.train()
            running = RunningMetrics(device)
            figures: dict[str, float] = {}
            for batch_index, (inputs, labels) in enumerate(spec.train_batches(epoch, random), 1):
                optimizer.zero_grad(set_to_none=True)
                logits, loss = _forward_loss(spec, inputs, labels, weights, settings)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                running.add(loss.detach(), logits.detach(), labels)
                if batch_index % sync_every == 0 or batch_index >= n_batches:
                    figures = {"loss": running.loss, "accuracy": running.accuracy}
                yield Progress(
                    (epoch - 1) * n_batches + min(batch_index, n_batches),
                    total,
                    spec.name,
                    f"epoch {epoch}/{settings.epochs}",
                    {
                        "epoch": epoch,
                        "batch": batch_index,
                        **figures,
                        "lr": schedule.lr,
                    },
                )
            validating = Progress(
                epoch * n_batches,
                total,
                spec.name,
                f"epoch {epoch}/{settings.epochs}: validating",
                {"epoch": epoch, **figures, "lr": schedule.lr},
            )
            val_loss, val_accuracy = yield from evaluate(spec, settings, validating)
        if running.count == 0:
            raise ValueError(f"{spec.name}: the training set gave no batch")
        lr_used = schedule.lr
        if schedule.step(epoch, val_loss) or best_state is None:
            best_state = _state_copy(model)
        finished = schedule.stopped or epoch == settings.epochs
        row = {
            "stage": spec.name,
            "epoch": epoch,
            "loss": running.loss,
            "accuracy": running.accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr_used,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        if settings.is_main_process:
            _save(
                settings,
                spec.name,
                model,
                best_state,
                optimizer,
                scaler,
                schedule,
                history,
                epoch,
                finished,
            )
            if settings.on_epoch_end is not None:
                settings.on_epoch_end(history)
        yield Progress(
            epoch * n_batches,
            total,
            spec.name,
            f"epoch {epoch}/{settings.epochs} done" + (" (early stop)" if schedule.stopped else ""),
            {
                "epoch": epoch,
                "loss": row["loss"],
                "accuracy": row["accuracy"],
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": lr_used,
                "row": row,
            },
        )
        if finished:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return _outcome(history, schedule, history[-1]["epoch"] if history else 0, resumed=resumed_from)


def _outcome(history, schedule: PlateauSchedule, last_epoch: int, resumed: int) -> StageOutcome:
    return StageOutcome(
        history=history,
        best_epoch=schedule.best_epoch,
        best_val_loss=schedule.best_loss if math.isfinite(schedule.best_loss) else float("nan"),
        stopped_early=schedule.stopped,
        resumed_from_epoch=resumed,
        extra={"last_epoch": last_epoch, "final_lr": schedule.lr},
    )


def _save(settings, name, model, best_state, optimizer, scaler, schedule, history, epoch, finished):
    tensors = prefixed("best", best_state or {})
    state: dict[str, Any] = {
        "epoch": epoch,
        "finished": finished,
        "schedule": schedule.to_dict(),
        "history": history,
        "seed": settings.seed,
    }
    if not finished:  # a finished stage needs only its best weights
        tensors.update(prefixed("model", model.state_dict()))
        optimizer_tensors, optimizer_state = optimizer_to_flat(optimizer)
        tensors.update(optimizer_tensors)
        state["optimizer"] = optimizer_state
        state["scaler"] = scaler.state_dict() if scaler is not None else None
    save_checkpoint(settings.checkpoint_dir, name, tensors, state)


def _grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler for float16 autocast on CUDA (bfloat16 needs none)."""
    if device.type == "cuda" and dtype == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []
