"""`train --init-from BUNDLE`: the backbones and the head start from the bundle's weights, and the
new bundle records its parent (issue 12: corrections that retrain)."""

from __future__ import annotations

import json

import pytest
import torch

from napari_allbag.cli.main import main
from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.model.bundle import load_bundle
from napari_allbag.training.build import new_combined_head, new_stage1_model
from napari_allbag.training.config import TrainConfig, TrainingError
from tests.model_factory import TINY_BACKBONE, TINY_SIZE, make_tiny_bundle


def _same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_models_start_from_the_bundle(tmp_path):
    bundle_dir = make_tiny_bundle(tmp_path / "parent", seed=7)
    ensemble = load_bundle(bundle_dir, "cpu").ensemble
    config = TrainConfig(
        tmp_path / "data", tmp_path / "run", backbone=TINY_BACKBONE, init_from=bundle_dir
    )
    cpu = torch.device("cpu")
    model_a = new_stage1_model(config, "stage1-A", cpu)
    model_b = new_stage1_model(config, "stage1-B", cpu)
    assert _same(model_a.state_dict(), ensemble.model_a.state_dict())
    assert _same(model_b.state_dict(), ensemble.model_b.state_dict())
    assert not _same(model_a.state_dict(), model_b.state_dict())
    head = new_combined_head(config, model_a, model_b, cpu)
    assert _same(head.state_dict(), ensemble.head.state_dict())

    cold = TrainConfig(
        tmp_path / "data", tmp_path / "run", backbone=TINY_BACKBONE, pretrained=False
    )
    assert not _same(new_stage1_model(cold, "stage1-A", cpu).state_dict(), model_a.state_dict())

    wrong = TrainConfig(tmp_path / "d", tmp_path / "r", backbone="resnet10t", init_from=bundle_dir)
    with pytest.raises(TrainingError, match="--backbone"):
        new_stage1_model(wrong, "stage1-A", cpu)


def test_train_init_from_records_the_parent(tmp_path, capsys):
    parent = make_tiny_bundle(tmp_path / "parent", seed=8)
    data = tmp_path / "annotated"
    write_annotated_folder(data, n_all=16, n_hem=16, n_subjects=2, seed=2, size=TINY_SIZE)
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--init-from", str(parent), "--epochs", "1"]
    args += ["--batch-size", "8", "--crop-size", str(TINY_SIZE), "--device", "cpu"]
    args += ["--workers", "1", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    meta = json.loads((out / "bundle" / "bundle.json").read_text())
    assert meta["backbone"]["name"] == TINY_BACKBONE  # taken from the parent
    assert meta["parent"]["path"] == str(parent.resolve())
    assert meta["training"]["config"]["init_from"] == str(parent)
