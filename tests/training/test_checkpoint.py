"""Atomic safetensors + JSON checkpoints: round trip, the JSON as commit point, no pickle."""

from __future__ import annotations

import json

import pytest
import torch

from napari_allbag.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    prefixed,
    save_checkpoint,
    unprefixed,
)


def _trained_model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_and_optimizer_exactly(tmp_path):
    model, optimizer = _trained_model_and_optimizer(0)
    tensors, optimizer_state = optimizer_to_flat(optimizer)
    tensors.update(prefixed("model", model.state_dict()))
    save_checkpoint(tmp_path, "stage", tensors, {"epoch": 3, "optimizer": optimizer_state})

    loaded_tensors, state = load_checkpoint(tmp_path, "stage")
    assert state["epoch"] == 3
    twin, twin_optimizer = _trained_model_and_optimizer(1)
    twin.load_state_dict(unprefixed("model", loaded_tensors))
    optimizer_from_flat(twin_optimizer, loaded_tensors, state["optimizer"])

    # one more identical step on both: the results agree bit for bit
    batch = torch.randn(16, 4)
    for m, opt in ((model, optimizer), (twin, twin_optimizer)):
        opt.zero_grad()
        m(batch).pow(2).mean().backward()
        opt.step()
    for (name, a), (_, b) in zip(
        model.state_dict().items(), twin.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_json_is_the_commit_point_and_old_tensor_files_go(tmp_path):
    save_checkpoint(tmp_path, "stage", {"w": torch.zeros(3)}, {"epoch": 1})
    save_checkpoint(tmp_path, "stage", {"w": torch.ones(3)}, {"epoch": 2})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["stage.000002.safetensors", "stage.json"]
    tensors, state = load_checkpoint(tmp_path, "stage")
    assert state["epoch"] == 2 and torch.equal(tensors["w"], torch.ones(3))

    # a crash after the new tensor file but before the new JSON: the old checkpoint still loads
    (tmp_path / "stage.000003.safetensors").write_bytes(b"half written")
    tensors, state = load_checkpoint(tmp_path, "stage")
    assert state["epoch"] == 2


def test_missing_and_damaged_checkpoints(tmp_path):
    assert load_checkpoint(tmp_path, "nothing") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad.json"):
        load_checkpoint(tmp_path, "bad")
    document = {"format": 1, "tensors": "gone.safetensors", "state": {}}
    (tmp_path / "gone.json").write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path, "gone")
