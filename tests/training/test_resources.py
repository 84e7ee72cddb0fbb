"""training.resources: the settings that depend on the device and the number of processes."""

from __future__ import annotations

import pytest
import torch

from napari_allbag.training import resources
from napari_allbag.training.config import TrainConfig, TrainingError
from napari_allbag.training.distributed import Distributed
from napari_allbag.training.resources import (
    SYNC_BATCHNORM_BELOW,
    autocast_dtype_for,
    default_train_batch_size,
    loader_workers,
    use_sync_batchnorm,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def _config(tmp_path, **changes) -> TrainConfig:
    return TrainConfig(data_dir=tmp_path / "data", out_dir=tmp_path / "run", **changes)


def test_batch_size_is_keras_default_off_the_gpu():
    assert default_train_batch_size(CPU) == 32
    assert default_train_batch_size(torch.device("meta")) == 32
    assert default_train_batch_size(CUDA) == 64


def test_no_autocast_on_the_cpu_and_a_half_type_on_a_gpu(monkeypatch):
    assert autocast_dtype_for(CPU) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert autocast_dtype_for(CUDA) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert autocast_dtype_for(CUDA) is torch.float16


def test_loader_workers_share_the_cores_between_the_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "default_workers", lambda: 16)
    config = _config(tmp_path)
    assert loader_workers(config, CPU) == 0  # no worker process on the CPU
    assert loader_workers(config, CUDA) == 8  # at most 8
    assert loader_workers(config, CUDA, processes_here=4) == 3  # 16 / 4, one for the process
    assert loader_workers(config, CUDA, processes_here=32) == 0
    assert loader_workers(_config(tmp_path, workers=5), CPU) == 5  # asked for: kept
    assert loader_workers(_config(tmp_path, workers=-2), CUDA) == 0


def test_sync_batchnorm_only_with_several_gpu_processes(tmp_path):
    single, two = Distributed.single(), Distributed(world_size=2)
    small, large = SYNC_BATCHNORM_BELOW - 1, SYNC_BATCHNORM_BELOW
    auto, on, off = (_config(tmp_path, sync_batchnorm=v) for v in ("auto", "on", "off"))
    assert not use_sync_batchnorm(auto, single, CUDA, small)
    assert not use_sync_batchnorm(on, single, CUDA, small)
    assert use_sync_batchnorm(auto, two, CUDA, small)
    assert not use_sync_batchnorm(auto, two, CUDA, large)
    assert use_sync_batchnorm(on, two, CUDA, large)
    assert not use_sync_batchnorm(off, two, CUDA, small)
    assert not use_sync_batchnorm(auto, two, CPU, small)
    with pytest.raises(TrainingError, match="needs GPUs"):
        use_sync_batchnorm(on, two, CPU, small)
