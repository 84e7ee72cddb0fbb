"""devices: the best device by default, clear errors for names this machine cannot use."""

from __future__ import annotations

import re

import pytest
import torch

from napari_allbag.model.devices import (
    DeviceError,
    autocast_dtype,
    default_batch_size,
    device_description,
    release_memory,
    select_device,
)


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def test_default_is_cuda_then_mps_then_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    assert select_device().type == expected
    assert select_device("auto").type == expected
    assert select_device("CPU") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_device_names_list_the_choices():
    with pytest.raises(DeviceError) as caught:
        select_device("tpu")
    assert "cuda" in str(caught.value) and "cpu" in str(caught.value)
    with pytest.raises(DeviceError):
        select_device("banana")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_unavailable_cuda_is_an_error_not_a_silent_cpu():
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        select_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_description_names_the_gpu():
    device = select_device("cuda:0")
    assert device_description(device) == f"CUDA: {torch.cuda.get_device_name(0)}"
    with pytest.raises(DeviceError, match="CUDA GPU"):
        select_device(f"cuda:{torch.cuda.device_count()}")


def test_cpu_description_batch_size_and_precision():
    description = device_description("cpu")
    assert re.fullmatch(r"CPU \(\d+ threads?\)", description)
    assert str(torch.get_num_threads()) in description
    assert default_batch_size("cpu") < default_batch_size("cuda")
    assert autocast_dtype("cpu") is None


def test_release_memory_runs_everywhere():
    release_memory("cpu")
    release_memory(None)
    release_memory(select_device())
