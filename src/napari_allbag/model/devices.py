"""Choose and describe the compute device: CUDA, then Apple MPS, then CPU, unless one is named."""

from __future__ import annotations

import gc

import torch

#: Device kinds a user may name (`--device`); an index may follow, e.g. "cuda:1".
DEVICE_KINDS = ("cuda", "mps", "cpu")


class DeviceError(ValueError):
    """A device name that is unknown or not available on this machine."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Names of the devices this machine can use, best first."""
    names = (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def select_device(name: str | torch.device | None = None) -> torch.device:
    """The named device, or the best available one (CUDA, then MPS, then CPU) when None/"auto"."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or str(name).strip().lower() in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    text = str(name).strip().lower()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise DeviceError(
            f"Unknown device {name!r}: use one of {', '.join(DEVICE_KINDS)} (or 'auto'). "
            f"Available here: {', '.join(available_devices())}."
        ) from error
    if device.type not in DEVICE_KINDS:
        raise DeviceError(
            f"Unsupported device {name!r}: use one of {', '.join(DEVICE_KINDS)} (or 'auto')."
        )
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"Device {name!r} asked for, but no CUDA GPU is available here "
                f"(available: {', '.join(available_devices())}). Use --device cpu or auto."
            )
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"Device {name!r} asked for, but this machine has {count} CUDA GPU(s) "
                f"(cuda:0 to cuda:{count - 1})."
            )
    if device.type == "mps" and not _mps_available():
        raise DeviceError(
            f"Device {name!r} asked for, but Apple MPS is not available here "
            f"(available: {', '.join(available_devices())}). Use --device cpu or auto."
        )
    return device


def device_description(device: torch.device | str) -> str:
    """A short human description, e.g. "CUDA: NVIDIA H100 80GB HBM3" or "CPU (2 threads)"."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"CUDA: {torch.cuda.get_device_name(index)}"
    if device.type == "mps":
        return "Apple MPS (Metal GPU)"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads != 1 else ''})"


def default_batch_size(device: torch.device | str) -> int:
    """A batch size that keeps a GPU busy and a CPU responsive."""
    return 32 if torch.device(device).type == "cpu" else 256


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype for inference on `device` (bf16 where supported, else fp16)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


def release_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and give cached GPU memory back to the driver.

    Nothing to do on the CPU: freed tensors go back at once (reference counting), and a full
    collection in a napari session holds the GIL for 0.3-1 s, freezing the viewer.
    """
    kind = torch.device(device).type if device is not None else None
    if kind == "cpu":
        return
    gc.collect()
    if (kind in (None, "cuda")) and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if kind in (None, "mps") and _mps_available():
        empty = getattr(getattr(torch, "mps", None), "empty_cache", None)
        if empty is not None:
            empty()
