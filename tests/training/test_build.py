"""training.build: models created from the run's seed, runners, SyncBatchNorm undone."""

from __future__ import annotations

import torch

from napari_allbag.training.build import (
    make_runners,
    new_combined_head,
    new_combined_model,
    new_stage1_model,
    seeded,
    stage1_skeleton,
    without_sync_batchnorm,
)
from napari_allbag.training.config import TrainConfig
from napari_allbag.training.distributed import Distributed

CPU = torch.device("cpu")


def _config(tmp_path, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        data_dir=tmp_path,
        out_dir=tmp_path / "run",
        backbone="test_resnet",
        pretrained=False,
        seed=seed,
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_seeded_is_reproducible_and_restores_the_global_generator(tmp_path):
    config = _config(tmp_path)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with seeded(config, "model-A", "init"):
        first = torch.rand(4)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream goes on untouched
    with seeded(config, "model-A", "init"):
        assert torch.equal(torch.rand(4), first)
    with seeded(config, "model-B", "init"):
        assert not torch.equal(torch.rand(4), first)


def test_stage1_models_depend_on_seed_and_name_only(tmp_path):
    config = _config(tmp_path)
    a = new_stage1_model(config, "model-A", CPU)
    assert _same(a, new_stage1_model(config, "model-A", CPU))
    assert not _same(a, new_stage1_model(config, "model-B", CPU))
    assert not _same(a, new_stage1_model(_config(tmp_path, seed=1), "model-A", CPU))
    skeleton = stage1_skeleton(config)
    assert skeleton.state_dict().keys() == a.state_dict().keys()


def test_one_process_runs_the_bare_model_for_training_and_validation(tmp_path):
    config = _config(tmp_path)
    model = new_stage1_model(config, "model-A", CPU)
    train_forward, eval_forward = make_runners(config, model, Distributed.single(), CPU, False)
    assert train_forward is model and eval_forward is model


def test_without_sync_batchnorm_keeps_weights_and_frozen_layers(tmp_path):
    config = _config(tmp_path)
    trained = new_stage1_model(config, "model-A", CPU)
    first = next(trained.parameters())
    first.requires_grad_(False)
    skeleton = stage1_skeleton(config)
    assert not _same(trained, skeleton)
    restored = without_sync_batchnorm(trained, skeleton, CPU)
    assert _same(restored, trained)
    assert [p.requires_grad for p in restored.parameters()] == [
        p.requires_grad for p in trained.parameters()
    ]
    assert not next(restored.parameters()).requires_grad


def test_combined_model_gets_its_own_trainable_copies_of_the_backbones(tmp_path):
    config = _config(tmp_path)
    model_a = new_stage1_model(config, "model-A", CPU)
    model_b = new_stage1_model(config, "model-B", CPU)
    for parameter in model_a.parameters():
        parameter.requires_grad_(False)
    head = new_combined_head(config, model_a, model_b, CPU)
    assert _same(head, new_combined_head(config, model_a, model_b, CPU))
    combined = new_combined_model(config, model_a, model_b, CPU)
    assert all(p.requires_grad for p in combined.parameters())
    assert not any(p.requires_grad for p in model_a.parameters())  # the stage-1 model untouched
    assert _same(combined.model_a, model_a) and _same(combined.head, head)
    assert combined.model_a.backbone is not model_a.backbone
