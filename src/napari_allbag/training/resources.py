"""Per-device training settings: batch size, mixed precision, loader workers, SyncBatchNorm."""

from __future__ import annotations

import torch

from napari_allbag.segmentation.dark import default_workers
from napari_allbag.training.config import TrainConfig, TrainingError
from napari_allbag.training.distributed import Distributed

#: SyncBatchNorm ("auto") when each process's batch is below this: from 32 images on (Keras'
#: default batch, the paper's), a process's own BatchNorm statistics are as good as one GPU's.
SYNC_BATCHNORM_BELOW = 32


def default_train_batch_size(device: torch.device) -> int:
    """32 on CPU and MPS (Keras' default batch size), 64 on a CUDA GPU."""
    return 64 if device.type == "cuda" else 32


def autocast_dtype_for(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU supports it, else float16 (with a GradScaler); None on CPU/MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def loader_workers(config: TrainConfig, device: torch.device, processes_here: int = 1) -> int:
    """DataLoader worker processes per training process: the cores of this machine shared by
    its training processes (one each for the process itself), at most 8."""
    if config.workers is not None:
        return max(0, int(config.workers))
    if device.type != "cuda":
        return 0
    return max(0, min(8, default_workers() // max(1, processes_here) - 1))


def use_sync_batchnorm(
    config: TrainConfig, dist: Distributed, device: torch.device, local_batch: int
) -> bool:
    """SyncBatchNorm: only with several GPU processes; "auto" when each one's batch is small."""
    if config.sync_batchnorm == "on" and dist.is_distributed and device.type != "cuda":
        raise TrainingError(
            "--sync-batchnorm on needs GPUs (PyTorch's SyncBatchNorm has no CPU version); "
            "use auto or off on the CPU."
        )
    if not dist.is_distributed or device.type != "cuda" or config.sync_batchnorm == "off":
        return False
    return config.sync_batchnorm == "on" or local_batch < SYNC_BATCHNORM_BELOW
