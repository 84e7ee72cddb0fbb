"""training.loop: seeds, Keras' RMSprop, running metrics, validation, and one stage end to end
on a small linear problem (trains, keeps the best epoch, checkpoints, resumes)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_allbag.progress import drive
from napari_allbag.training.batches import FeatureBatches
from napari_allbag.training.loop import (
    EpochRandom,
    RunningMetrics,
    StageSettings,
    StageSpec,
    autocast_context,
    derive_seed,
    evaluate,
    fit_stage,
    make_rmsprop,
    order_seed,
    rank_parts,
)

CPU = torch.device("cpu")


def test_seeds_follow_the_path_of_names():
    assert derive_seed(0, "stage1-A", 3) == derive_seed(0, "stage1-A", 3)
    seeds = {
        derive_seed(s, st, e) for s in (0, 1) for st in ("stage1-A", "stage1-B") for e in (1, 2)
    }
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)
    assert rank_parts(0) == () and rank_parts(2) == ("rank", 2)
    assert 0 <= order_seed(5, "stage2") < 2**62
    first = EpochRandom.for_epoch(1, "stage2", 4, CPU)
    same = EpochRandom.for_epoch(1, "stage2", 4, CPU)
    other_rank = EpochRandom.for_epoch(1, "stage2", 4, CPU, rank=1)
    assert first.epoch == 4
    assert torch.equal(torch.rand(3, generator=first.order), torch.rand(3, generator=same.order))
    # Ranks share the batch order but not the augmentation.
    assert torch.equal(
        torch.rand(3, generator=same.augment), torch.rand(3, generator=first.augment)
    )
    first = EpochRandom.for_epoch(1, "stage2", 4, CPU)
    assert not torch.equal(
        torch.rand(3, generator=first.augment), torch.rand(3, generator=other_rank.augment)
    )


def test_rmsprop_has_keras_defaults_and_autocast_is_off_for_none():
    optimizer = make_rmsprop([nn.Parameter(torch.zeros(2))], lr=0.01)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["eps"]) == (0.01, 0.9, 1e-7)
    with autocast_context(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_running_metrics_weight_the_loss_by_class():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    losses = F.cross_entropy(logits, labels, reduction="none")
    weights = torch.tensor([1.0, 2.5])
    metrics = RunningMetrics(CPU)
    metrics.add(losses, logits, labels, weights)
    expected = (losses[0] * 1 + losses[1] * 2.5 + losses[2] * 2.5) / 6.0
    assert metrics.loss == pytest.approx(float(expected))
    assert metrics.accuracy == pytest.approx(2 / 3) and metrics.count == 3
    plain = RunningMetrics(CPU)
    plain.add(losses.mean(), logits, labels)
    assert plain.loss == pytest.approx(float(losses.mean()))
    assert RunningMetrics(CPU).count == 0 and RunningMetrics(CPU).loss != RunningMetrics(CPU).loss


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, a, b):
        return self.layer(torch.cat([a, b], dim=1))


def _problem(seed: int, n: int = 96):
    """Two separable classes of 4-d points, split into two feature halves."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.randn(n, 4, generator=generator) * 0.5 + (labels[:, None] * 2.0 - 1.0)
    return FeatureBatches(points[:, :2], points[:, 2:], labels, 16, CPU)


def _stage(tmp_path, epochs: int = 6):
    torch.manual_seed(0)
    model = _Linear()
    train, val = _problem(1), _problem(2, n=40)
    spec = StageSpec(
        name="stage2",
        model=model,
        train_batches=lambda epoch, random: train.batches(random),
        val_batches=val.batches,
        n_train_batches=train.n_batches,
        forward=lambda m, x: m(*x),
        class_weights=torch.tensor([1.0, 2.5]),
    )
    settings = StageSettings(
        epochs=epochs,
        lr=0.05,
        patience_lr=6,
        patience_stop=12,
        seed=0,
        device=CPU,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    settings.checkpoint_dir.mkdir(exist_ok=True)
    return spec, settings


def test_evaluate_gives_the_weighted_loss_and_accuracy(tmp_path):
    spec, settings = _stage(tmp_path)
    loss, accuracy = drive(evaluate(spec, settings))
    a, b, labels = (
        torch.cat(parts)
        for parts in zip(*((x[0], x[1], y) for x, y in spec.val_batches()), strict=True)
    )
    with torch.no_grad():
        logits = spec.model(a, b)
    losses = F.cross_entropy(logits, labels, reduction="none")
    weights = torch.tensor([1.0, 2.5])[labels]
    assert loss == pytest.approx(float((losses * weights).sum() / weights.sum()), rel=1e-6)
    assert accuracy == pytest.approx(float((logits.argmax(1) == labels).float().mean()))


def test_a_stage_learns_keeps_its_best_epoch_and_resumes_finished(tmp_path):
    spec, settings = _stage(tmp_path)
    before, _ = drive(evaluate(spec, settings))
    events = []
    outcome = drive(fit_stage(spec, settings), events.append)
    rows = outcome.history
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["val_accuracy"] >= 0.95 and rows[-1]["val_loss"] < before
    best = min(rows, key=lambda r: r["val_loss"])
    assert outcome.best_epoch == best["epoch"]
    assert outcome.best_val_loss == pytest.approx(best["val_loss"])
    assert drive(evaluate(spec, settings))[0] == pytest.approx(best["val_loss"], rel=1e-5)
    assert any("epoch 6/6 done" in e.message for e in events)
    state = json.loads((settings.checkpoint_dir / "stage2.json").read_text())
    assert state["state"]["finished"] and state["state"]["epoch"] == 6
    # Run again: the finished stage is loaded from its checkpoint, not trained again.
    weights = {k: v.clone() for k, v in spec.model.state_dict().items()}
    with torch.no_grad():
        spec.model.layer.weight.zero_()
    again = drive(fit_stage(spec, settings))
    assert again.history == rows and again.resumed_from_epoch == 6
    for key, value in spec.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
