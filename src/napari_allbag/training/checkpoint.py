"""Atomic training checkpoints: tensors in safetensors, everything else in JSON, never pickle.

A checkpoint named `<stem>` is two files in one folder:

    <stem>.json                      epoch counters, schedule, history, optimizer scalars, ...
    <stem>.<serial>.safetensors      model / best-model / optimizer tensors

The JSON names its tensor file and is replaced last (`io.atomic`), so it is the commit point: a
crash or power cut at any moment leaves either the previous checkpoint or the new one, both whole.
The tensor file of the previous checkpoint is deleted only after the new JSON is in place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from napari_allbag.io.atomic import atomic_path, write_json_atomic
from napari_allbag.io.schema import validate_checkpoint

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (damaged or from another run); the message says which."""


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a flat dict of tensors as safetensors, atomically (copied to CPU, contiguous)."""
    from safetensors.torch import save_file

    with atomic_path(path) as temp:
        save_file(_plain(tensors), str(temp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by `save_tensors_atomic`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read ({error}).") from error


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory; the copy also detaches from training
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    folder: Path, stem: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]
) -> Path:
    """Write checkpoint `stem` (tensors + JSON state) atomically; returns the JSON path."""
    folder = Path(folder)
    json_path = folder / f"{stem}.json"
    previous = _tensor_file_of(json_path)
    serial = _next_serial(previous)
    tensor_name = f"{stem}.{serial:06d}.safetensors"
    save_tensors_atomic(folder / tensor_name, tensors)
    document = {"format": CHECKPOINT_FORMAT, "tensors": tensor_name, "state": state}
    write_json_atomic(json_path, document)
    for stale in folder.glob(f"{stem}.*.safetensors"):
        if stale.name != tensor_name:
            stale.unlink(missing_ok=True)
    return json_path


def load_checkpoint(
    folder: Path, stem: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and state of checkpoint `stem`, or None when there is none."""
    json_path = Path(folder) / f"{stem}.json"
    if not json_path.is_file():
        return None
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: absurd nesting
        raise CheckpointError(f"{json_path} cannot be read as JSON ({error}).") from error
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{json_path} is not a napari-allbag checkpoint (format 1).")
    tensor_path = validate_checkpoint(document, json_path, error=CheckpointError)
    if not tensor_path.is_file():
        raise CheckpointError(f"{json_path} names {tensor_path.name}, which is missing.")
    return load_tensors(tensor_path), document["state"]


def _tensor_file_of(json_path: Path) -> str | None:
    try:
        return json.loads(json_path.read_text(encoding="utf-8")).get("tensors")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None


def _next_serial(previous: str | None) -> int:
    if previous:
        try:
            return int(previous.rsplit(".", 2)[-2]) + 1
        except (ValueError, IndexError):
            pass
    return 1


# ----------------------------------------------------------------------------- state dicts


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every key prefixed by `prefix` + '.'."""
    return {f"{prefix}.{key}": value for key, value in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with `prefix` + '.', without it."""
    start = f"{prefix}."
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def optimizer_to_flat(
    optimizer: torch.optim.Optimizer, prefix: str = "optim"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict as (tensors, JSON-able scalars)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    document: dict[str, Any],
    prefix: str = "optim",
) -> None:
    """Load what `optimizer_to_flat` wrote back into `optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in unprefixed(prefix, tensors).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in document.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": document["param_groups"]})
