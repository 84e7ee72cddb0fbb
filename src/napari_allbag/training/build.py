"""The trainer's models: seeded creation, device placement, DDP wrapping, SyncBatchNorm undone."""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
from typing import Any

import torch

from napari_allbag.model.networks import CombinedHead, CombinedModel, Stage1Model, create_backbone
from napari_allbag.training.config import TrainConfig, TrainingError
from napari_allbag.training.distributed import Distributed
from napari_allbag.training.loop import derive_seed


@contextlib.contextmanager
def seeded(config: TrainConfig, *parts: object):
    """Seed torch's generator for a model's initialisation, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, *parts))
        yield


def place_on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type == "cuda":
        return module.to(device=device, memory_format=torch.channels_last)
    return module.to(device)


def new_stage1_model(config: TrainConfig, name: str, device: torch.device) -> Stage1Model:
    """A fresh stage-1 model; with `config.init_from`, the bundle's model-A or model-B."""
    warm = initial_weights(config)
    with seeded(config, name, "init"):
        if warm is not None:
            model = Stage1Model(create_backbone(config.backbone, pretrained=False))
        else:
            model = Stage1Model(
                create_backbone(config.backbone, config.pretrained, config.weights_path)
            )
    if warm is not None:
        _load_warm(model, warm["model_b" if name.endswith("B") else "model_a"], name)
    return place_on(model, device)


def initial_weights(config: TrainConfig) -> dict[str, dict] | None:
    """The state dicts of `config.init_from`'s model-A, model-B and combined head (None without
    one), loaded once per run."""
    if config.init_from is None:
        return None
    return _bundle_states(str(config.init_from), config.backbone)


@functools.lru_cache(maxsize=1)
def _bundle_states(path: str, backbone: str) -> dict[str, dict]:
    from napari_allbag.model.bundle import BundleError, load_bundle

    try:
        loaded = load_bundle(path, "cpu")
    except BundleError as error:
        raise TrainingError(f"cannot start from the bundle {path}: {error}") from error
    if loaded.backbone.name != backbone:
        raise TrainingError(
            f"the bundle {path} holds {loaded.backbone.name!r} backbones, not {backbone!r}: "
            f"train with --backbone {loaded.backbone.name}"
        )
    ensemble = loaded.ensemble
    states = {
        part: {k: v.clone() for k, v in getattr(ensemble, part).state_dict().items()}
        for part in ("model_a", "model_b", "head")
    }
    head_info = loaded.meta.get("combined_head") or {}
    states["head_shape"] = {
        "hidden": int(states["head"]["mlp.0.weight"].shape[0]),
        "dropout": float(head_info.get("dropout", 0.6)),
    }
    return states


def _load_warm(module: torch.nn.Module, state: dict, what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise TrainingError(f"the starting bundle's {what} does not fit: {error}") from error


def make_runners(config, model, dist: Distributed, device, sync_bn: bool, compile: bool = True):
    """(training forward, validation forward) of `model`.

    One process: the model (compiled where asked) for both. Several: training goes through
    DistributedDataParallel (gradients averaged over the ranks; BatchNorm layers made
    SyncBatchNorm first where `sync_bn`); validation uses the bare model, because each rank
    validates a share of its own size and DDP's forward may talk to the other ranks.
    """
    compile = compile and config.compile
    if not dist.is_distributed:
        runner = torch.compile(model) if compile else model
        return runner, runner
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        from timm.layers import convert_sync_batchnorm

        converted = convert_sync_batchnorm(model, process_group=dist.group)
        if converted is not model:  # pragma: no cover - only a bare BatchNorm is replaced
            raise TrainingError("SyncBatchNorm conversion replaced the whole model")
    options: dict[str, Any] = {}
    if sync_bn:  # SyncBatchNorm keeps the statistics equal itself: no broadcast before forward
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        options["forward_sync_buffers" if newer else "broadcast_buffers"] = False
    with dist.guard("wrapping the model for data-parallel training"):
        wrapped = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            process_group=dist.group,
            # gradients written straight into the all-reduce buckets (GPUs: less memory)
            gradient_as_bucket_view=device.type == "cuda",
            **options,
        )
    if compile:
        return torch.compile(wrapped), torch.compile(model)
    return wrapped, model


def stage1_skeleton(config: TrainConfig) -> Stage1Model:
    """A stage-1 model with plain BatchNorm, to receive trained weights (no download)."""
    return Stage1Model(create_backbone(config.backbone, pretrained=False))


def without_sync_batchnorm(
    trained: torch.nn.Module, skeleton: torch.nn.Module, device: torch.device
) -> torch.nn.Module:
    """`trained`'s weights in `skeleton` (the same model with plain BatchNorm layers)."""
    skeleton.load_state_dict(trained.state_dict())
    for source, target in zip(trained.parameters(), skeleton.parameters(), strict=True):
        target.requires_grad_(source.requires_grad)
    return place_on(skeleton, device)


def new_combined_head(config, model_a, model_b, device) -> CombinedHead:
    warm = initial_weights(config)
    shape = warm["head_shape"] if warm is not None else {}
    with seeded(config, "stage2", "init"):
        head = CombinedHead(model_a.num_features, model_b.num_features, **shape)
    if warm is not None:
        _load_warm(head, warm["head"], "combined head")
    return head.to(device)


def new_combined_model(config, model_a, model_b, device) -> CombinedModel:
    head = new_combined_head(config, model_a, model_b, device)
    combined = CombinedModel(copy.deepcopy(model_a), copy.deepcopy(model_b), head)
    for parameter in combined.parameters():
        parameter.requires_grad_(True)
    return place_on(combined, device)
