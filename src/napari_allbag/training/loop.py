"""One training stage: epochs of batches, validation, the paper's schedule, a checkpoint per epoch.

`fit_stage` trains any module (a stage-1 model, the combined head on cached features, or the whole
combined model) the same way: RMSprop with Keras 2.2.4's defaults, cross entropy (optionally
class-weighted), `PlateauSchedule` on validation loss, the best weights kept. It is a generator of
`Progress` events (one per batch, one per epoch) and returns a `StageOutcome`.

Reproducible and resumable: every epoch starts from a seed derived from (run seed, stage, epoch),
which drives the batch order, the augmentation and dropout; the checkpoint after each epoch holds
the weights, the best weights, the optimizer, the schedule and the history. Resuming from the
checkpoint of epoch N therefore gives exactly the run that was not interrupted.

Data-parallel (`StageSettings.dist`, a `distributed.Distributed`): every rank runs this loop on
its share of the batches (the model wrapped in DistributedDataParallel by the trainer, so
gradients are averaged); the epoch's training and validation sums are added over the ranks
before the schedule sees them, so every rank takes the same decisions; BatchNorm statistics are
taken from rank 0 before validating; the checkpoint is read by rank 0 and broadcast, and written
by rank 0 only. Rank r > 0 draws its own augmentation and dropout (seeds that include r).
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

from napari_allbag.io.schema import validate_stage_state
from napari_allbag.progress import Progress
from napari_allbag.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    save_checkpoint,
    unprefixed,
)
from napari_allbag.training.distributed import Distributed
from napari_allbag.training.schedule import PlateauSchedule

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


def rank_parts(rank: int) -> tuple[object, ...]:
    """Seed-path suffix of a rank: none for rank 0 (so a single process is rank 0's stream)."""
    return ("rank", rank) if rank else ()


def order_seed(seed: int, stage: str) -> int:
    """The `DistributedSampler` seed of a stage (the sampler adds the epoch itself)."""
    return derive_seed(seed, stage, "order") % 2**62


@dataclass
class EpochRandom:
    """An epoch's random streams: batch order (CPU) and augmentation (on the training device).

    `epoch` is what a `DistributedSampler` is set to; `order` serves feeders without one.
    """

    order: torch.Generator
    augment: torch.Generator
    epoch: int = 0

    @classmethod
    def for_epoch(
        cls, seed: int, stage: str, epoch: int, device: torch.device, rank: int = 0
    ) -> EpochRandom:
        order = torch.Generator().manual_seed(derive_seed(seed, stage, epoch, "order"))
        augment = torch.Generator(device=device if device.type == "cuda" else "cpu")
        augment.manual_seed(derive_seed(seed, stage, epoch, "augment", *rank_parts(rank)))
        return cls(order, augment, int(epoch))


@dataclass
class StageSpec:
    """What `fit_stage` trains and on what.

    `train_batches(epoch, random)` gives the epoch's batches (order and augmentation drawn from
    the `EpochRandom` generators); `val_batches()` the validation batches (this rank's share);
    `forward(model, inputs)` the logits while training (through the DDP wrapper, if any);
    `eval_forward` the logits while validating (default: `forward`).
    """

    name: str
    model: nn.Module
    train_batches: Callable[[int, EpochRandom], Iterable[Batch]]
    val_batches: Callable[[], Iterable[Batch]]
    n_train_batches: int
    forward: Callable[[nn.Module, Any], torch.Tensor]
    parameters: list[nn.Parameter] | None = None
    class_weights: torch.Tensor | None = None
    eval_forward: Callable[[nn.Module, Any], torch.Tensor] | None = None

    @classmethod
    def over_batches(
        cls,
        name: str,
        model: nn.Module,
        train: Any,
        val: Any,
        runners: tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]],
        class_weights: torch.Tensor | None = None,
        spread_inputs: bool = False,
    ) -> StageSpec:
        """A stage on `train`'s shuffled batches, validated on `val`'s (each a
        `batches.CropFeeder` or `batches.FeatureBatches`).

        `runners`: (training forward, validation forward) of the model, called with a batch's
        inputs, or with its tuple of inputs spread as arguments (`spread_inputs`: features).
        """
        train_forward, eval_forward = runners
        if spread_inputs:
            return cls(
                name=name,
                model=model,
                train_batches=lambda epoch, random: train.batches(random),
                val_batches=val.batches,
                n_train_batches=train.n_batches,
                forward=lambda m, x: train_forward(*x),
                eval_forward=lambda m, x: eval_forward(*x),
                class_weights=class_weights,
            )
        return cls(
            name=name,
            model=model,
            train_batches=lambda epoch, random: train.batches(random),
            val_batches=val.batches,
            n_train_batches=train.n_batches,
            forward=lambda m, x: train_forward(x),
            eval_forward=lambda m, x: eval_forward(x),
            class_weights=class_weights,
        )


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
    dist: Distributed = field(default_factory=Distributed.single)
    #: called by every rank after each epoch (and its checkpoint) with (stage, epoch)
    after_epoch: Callable[[str, int], None] | None = None


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
    """(logits, loss to minimise, per-cell losses or None).

    Class weights: the loss is the weighted mean over the batch. Under DDP the ranks' gradients
    are averaged, and each rank's weighted mean has its own denominator; so each rank divides
    its weighted sum by the GLOBAL batch's weight sum (times the number of ranks), which makes
    the averaged gradient that of the global batch's weighted mean, as in one process.
    """
    with autocast_context(settings.device, settings.autocast_dtype):
        logits = spec.forward(spec.model, inputs)
    logits = logits.float()
    if weights is None:
        return logits, F.cross_entropy(logits, labels), None
    losses = F.cross_entropy(logits, labels, reduction="none")
    cell_weights = weights[labels]
    total = cell_weights.sum().detach()
    dist = settings.dist
    if dist.is_distributed:
        total = dist.all_reduce_tensor(total.clone(), f"{spec.name}: class weights") / (
            dist.world_size
        )
    return logits, (losses * cell_weights).sum() / total, losses.detach()


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

    def reduced(self, dist: Distributed, where: str) -> RunningMetrics:
        """These sums added over all ranks (the same figures on every rank)."""
        if not dist.is_distributed:
            return self
        loss_sum, weight_sum, correct, count = dist.all_reduce_sum(
            [float(self.loss_sum), float(self.weight_sum), float(self.correct), self.count], where
        )
        total = RunningMetrics(torch.device("cpu"))
        total.loss_sum += loss_sum
        total.weight_sum += weight_sum
        total.correct += correct
        total.count = int(round(count))
        return total

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
    Under DDP each rank validates its share and the sums are added over the ranks.
    """
    spec.model.eval()
    weights = spec.class_weights.to(settings.device) if spec.class_weights is not None else None
    metrics = RunningMetrics(settings.device)
    forward = spec.eval_forward or spec.forward
    for inputs, labels in spec.val_batches():
        with torch.no_grad(), autocast_context(settings.device, settings.autocast_dtype):
            logits = forward(spec.model, inputs).float()
            losses = F.cross_entropy(logits, labels, reduction="none")
            metrics.add(losses, logits, labels, weights)
        if event is not None:
            yield event
    metrics = metrics.reduced(settings.dist, f"{spec.name}: validation")
    if metrics.count == 0:
        raise ValueError("the validation set is empty")
    return metrics.loss, metrics.accuracy


def fit_stage(spec: StageSpec, settings: StageSettings) -> Iterator[Progress]:
    """Train `spec.model` for one stage (see module doc); returns a `StageOutcome`.

    Written as a generator: closing it (or an exception) stops within one batch; the checkpoint of
    the last finished epoch stays on disk.
    """
    stage = _StageTraining(spec, settings)
    saved = _load_shared_checkpoint(settings, spec.name)
    if saved is not None and stage.resume(*saved):
        epoch = saved[1]["epoch"]
        yield Progress(
            settings.epochs,
            settings.epochs,
            spec.name,
            "finished earlier (resumed)",
            {"epoch": epoch},
        )
        return _outcome(stage.history, stage.schedule, epoch, resumed=epoch)
    resumed_from = stage.start_epoch - 1
    for epoch in range(stage.start_epoch, settings.epochs + 1):
        stage.set_lr()
        started = time.perf_counter()
        running, val_loss, val_accuracy = yield from stage.run_epoch(epoch)
        row = stage.end_epoch(epoch, running, val_loss, val_accuracy, started)
        yield stage.epoch_done(epoch, row)
        if stage.finished(epoch):
            break
    if stage.best_state is not None:
        spec.model.load_state_dict(stage.best_state)
    settings.dist.check_same_weights(spec.model, spec.name)
    history = stage.history
    return _outcome(history, stage.schedule, history[-1]["epoch"] if history else 0, resumed_from)


class _StageTraining:
    """A stage while it trains: the optimizer, the schedule, the scaler, the history and the
    best weights so far (what its checkpoint holds), and the epoch to start from."""

    def __init__(self, spec: StageSpec, settings: StageSettings):
        self.spec = spec
        self.settings = settings
        device = settings.device
        parameters = (
            spec.parameters
            if spec.parameters is not None
            else [p for p in spec.model.parameters() if p.requires_grad]
        )
        self.optimizer = make_rmsprop(parameters, settings.lr)
        self.schedule = PlateauSchedule(
            lr=settings.lr, patience_lr=settings.patience_lr, patience_stop=settings.patience_stop
        )
        self.scaler = _grad_scaler(device, settings.autocast_dtype)
        self.weights = spec.class_weights.to(device) if spec.class_weights is not None else None
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start_epoch = 1
        self.n_batches = max(1, spec.n_train_batches)
        self.sync_every = 1 if device.type == "cpu" else SYNC_EVERY
        self.total = settings.epochs * self.n_batches

    def resume(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> bool:
        """Continue from a checkpoint; True when the stage had finished (best weights loaded)."""
        model = self.spec.model
        where = self.settings.checkpoint_dir / f"{self.spec.name}.json"
        validate_stage_state(state, where, CheckpointError)
        self.history = list(state["history"])
        self.schedule = PlateauSchedule.from_dict(state["schedule"])
        best = unprefixed("best", tensors)
        self.best_state = {k: v.to(self.settings.device) for k, v in best.items()} if best else None
        if state.get("finished"):
            model.load_state_dict(
                self.best_state if self.best_state is not None else unprefixed("model", tensors)
            )
            return True
        model.load_state_dict(unprefixed("model", tensors))
        optimizer_from_flat(self.optimizer, tensors, state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        return False

    def set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr

    def finished(self, epoch: int) -> bool:
        return self.schedule.stopped or epoch == self.settings.epochs

    def run_epoch(
        self, epoch: int
    ) -> Generator[Progress, None, tuple[RunningMetrics, float, float]]:
        """Train on the epoch's batches, then validate, under the epoch's own random streams;
        (training sums over the ranks, validation loss, validation accuracy)."""
        spec, settings = self.spec, self.settings
        device, dist = settings.device, settings.dist
        with torch.random.fork_rng(devices=_rng_devices(device)):
            rank = rank_parts(dist.rank)
            torch.manual_seed(derive_seed(settings.seed, spec.name, epoch, "torch", *rank))
            random = EpochRandom.for_epoch(settings.seed, spec.name, epoch, device, dist.rank)
            running, figures = yield from self.train_batches(epoch, random)
            validating = Progress(
                epoch * self.n_batches,
                self.total,
                spec.name,
                f"epoch {epoch}/{settings.epochs}: validating",
                {"epoch": epoch, **figures, "lr": self.schedule.lr},
            )
            running = running.reduced(dist, f"{spec.name}: epoch {epoch}")
            dist.sync_buffers(spec.model, f"{spec.name}: epoch {epoch}, BatchNorm statistics")
            val_loss, val_accuracy = yield from evaluate(spec, settings, validating)
        if running.count == 0:
            raise ValueError(f"{spec.name}: the training set gave no batch")
        return running, val_loss, val_accuracy

    def train_batches(
        self, epoch: int, random: EpochRandom
    ) -> Generator[Progress, None, tuple[RunningMetrics, dict[str, float]]]:
        """One pass over the training batches; (running sums, the figures last shown)."""
        spec, settings = self.spec, self.settings
        spec.model.train()
        running = RunningMetrics(settings.device)
        figures: dict[str, float] = {}
        for batch_index, (inputs, labels) in enumerate(spec.train_batches(epoch, random), 1):
            logits, loss, losses = self.step(inputs, labels)
            if losses is None:
                running.add(loss.detach(), logits.detach(), labels)
            else:
                running.add(losses, logits.detach(), labels, self.weights)
            if batch_index % self.sync_every == 0 or batch_index >= self.n_batches:
                figures = {"loss": running.loss, "accuracy": running.accuracy}
            yield Progress(
                (epoch - 1) * self.n_batches + min(batch_index, self.n_batches),
                self.total,
                spec.name,
                f"epoch {epoch}/{settings.epochs}",
                {"epoch": epoch, "batch": batch_index, **figures, "lr": self.schedule.lr},
            )
        return running, figures

    def step(self, inputs, labels: torch.Tensor):
        """One optimizer step on a batch; (logits, loss, per-cell losses or None)."""
        self.optimizer.zero_grad(set_to_none=True)
        logits, loss, losses = _forward_loss(self.spec, inputs, labels, self.weights, self.settings)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return logits, loss, losses

    def end_epoch(
        self, epoch: int, running: RunningMetrics, val_loss: float, val_accuracy: float, started
    ) -> dict[str, Any]:
        """The schedule's step, the best weights, the history row, the checkpoint and the
        epoch hooks; returns the row."""
        settings = self.settings
        lr_used = self.schedule.lr
        if self.schedule.step(epoch, val_loss) or self.best_state is None:
            self.best_state = _state_copy(self.spec.model)
        row = {
            "stage": self.spec.name,
            "epoch": epoch,
            "loss": running.loss,
            "accuracy": running.accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr_used,
            "seconds": time.perf_counter() - started,
        }
        self.history.append(row)
        if settings.is_main_process:
            self.save(epoch, self.finished(epoch))
            if settings.on_epoch_end is not None:
                settings.on_epoch_end(self.history)
        if settings.after_epoch is not None:
            settings.after_epoch(self.spec.name, epoch)
        return row

    def epoch_done(self, epoch: int, row: dict[str, Any]) -> Progress:
        stopped = " (early stop)" if self.schedule.stopped else ""
        figures = ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
        return Progress(
            epoch * self.n_batches,
            self.total,
            self.spec.name,
            f"epoch {epoch}/{self.settings.epochs} done{stopped}",
            {"epoch": epoch, **{key: row[key] for key in figures}, "row": row},
        )

    def save(self, epoch: int, finished: bool) -> None:
        """The checkpoint after `epoch` (a finished stage keeps only its best weights)."""
        tensors = prefixed("best", self.best_state or {})
        state: dict[str, Any] = {
            "epoch": epoch,
            "finished": finished,
            "schedule": self.schedule.to_dict(),
            "history": self.history,
            "seed": self.settings.seed,
        }
        if not finished:
            tensors.update(prefixed("model", self.spec.model.state_dict()))
            optimizer_tensors, optimizer_state = optimizer_to_flat(self.optimizer)
            tensors.update(optimizer_tensors)
            state["optimizer"] = optimizer_state
            state["scaler"] = self.scaler.state_dict() if self.scaler is not None else None
        save_checkpoint(self.settings.checkpoint_dir, self.spec.name, tensors, state)


def _outcome(history, schedule: PlateauSchedule, last_epoch: int, resumed: int) -> StageOutcome:
    return StageOutcome(
        history=history,
        best_epoch=schedule.best_epoch,
        best_val_loss=schedule.best_loss if math.isfinite(schedule.best_loss) else float("nan"),
        stopped_early=schedule.stopped,
        resumed_from_epoch=resumed,
        extra={"last_epoch": last_epoch, "final_lr": schedule.lr},
    )


def _load_shared_checkpoint(settings: StageSettings, name: str):
    """The stage's checkpoint as rank 0 reads it, on every rank (None when there is none)."""
    dist = settings.dist
    if not dist.is_distributed:
        return load_checkpoint(settings.checkpoint_dir, name)
    found: list[Any] = [None]

    def read() -> dict[str, Any] | None:
        found[0] = load_checkpoint(settings.checkpoint_dir, name)
        return None if found[0] is None else found[0][1]

    state = dist.share(read, where=f"{name}: reading the checkpoint")
    if state is None:
        return None
    tensors = found[0][0] if dist.is_main else None
    return dist.broadcast_tensors(tensors, f"{name}: sharing the checkpoint"), state


def _grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler for float16 autocast on CUDA (bfloat16 needs none)."""
    if device.type == "cuda" and dtype == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []
