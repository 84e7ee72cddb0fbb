"""Tiny random-initialised ensembles and bundles for tests (no download, fast on two CPU cores).

Other test modules import this: `from tests.model_factory import make_tiny_bundle` (tests/ is a
package; pytest's default rootdir-based import mode puts the repository root on the import path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_allbag.model.bundle import save_bundle
from napari_allbag.model.networks import (
    BackboneConfig,
    CombinedHead,
    CombinedModel,
    Stage1Model,
    create_backbone,
    resolve_backbone,
)

TINY_BACKBONE = "test_resnet"
TINY_SIZE = 64


def _randomise_batchnorm(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give BatchNorm layers non-trivial statistics so eval-mode outputs differ between models."""
    for layer in module.modules():
        if (
            isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
            and layer.running_mean is not None
        ):
            layer.running_mean.copy_(
                torch.randn(layer.running_mean.shape, generator=generator) * 0.1
            )
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=generator) + 0.5)


def make_tiny_models(
    seed: int = 0,
    backbone: str = TINY_BACKBONE,
    img_size: int = TINY_SIZE,
    hidden: int = 32,
    own_backbones: bool = False,
) -> tuple[Stage1Model, Stage1Model, CombinedHead | CombinedModel, BackboneConfig]:
    """Model-A, model-B, the combined head (or a CombinedModel with its own backbones) and config."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = resolve_backbone(backbone, img_size=img_size)
    model_a = Stage1Model(create_backbone(backbone, pretrained=False))
    model_b = Stage1Model(create_backbone(backbone, pretrained=False))
    head: CombinedHead | CombinedModel = CombinedHead(
        model_a.num_features, model_b.num_features, hidden=hidden
    )
    for module in (model_a, model_b, head):
        _randomise_batchnorm(module, generator)
    if own_backbones:
        combined_a = Stage1Model(create_backbone(backbone, pretrained=False))
        combined_b = Stage1Model(create_backbone(backbone, pretrained=False))
        for module in (combined_a, combined_b):
            _randomise_batchnorm(module, generator)
        head = CombinedModel(combined_a, combined_b, head)
    for module in (model_a, model_b, head):
        module.eval()
    return model_a, model_b, head, config


def tiny_segmentation_params(crop_size: int = TINY_SIZE) -> dict[str, Any]:
    """Segmentation parameters for tiny bundles (a dict, valid for SegmentationParams.from_dict)."""
    try:
        from napari_allbag.segmentation.dark import SegmentationParams
    except ImportError:
        return {"crop_size": crop_size}
    return SegmentationParams(crop_size=crop_size).to_dict()


def make_tiny_bundle(
    out_dir: str | Path,
    seed: int = 0,
    backbone: str = TINY_BACKBONE,
    img_size: int = TINY_SIZE,
    crop_size: int | None = None,
    own_backbones: bool = False,
    overwrite: bool = False,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Save a tiny random-initialised bundle at `out_dir` and return its path (`extra_meta`:
    further bundle.json fields, e.g. `model.trust.calibrate_ensemble`'s)."""
    model_a, model_b, head, config = make_tiny_models(
        seed, backbone, img_size, own_backbones=own_backbones
    )
    meta = {
        "backbone": config,
        "segmentation": tiny_segmentation_params(crop_size or img_size),
        "training": {"note": "random initialisation, for tests"},
        "metrics": {},
        **(extra_meta or {}),
    }
    return save_bundle(out_dir, model_a, model_b, head, meta, overwrite=overwrite)


def random_crops(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """n random uint8 RGB crops, size x size: inputs whose exact content does not matter."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def direct_probs(bundle, crops: np.ndarray) -> np.ndarray:
    """The ensemble's probabilities computed in one call, bypassing the batched pipeline."""
    with torch.no_grad():
        return bundle.ensemble(torch.from_numpy(crops)).numpy()
