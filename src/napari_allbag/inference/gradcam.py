"""Grad-CAM heatmaps: where in a crop a model found the evidence for a class.

Grad-CAM (Selvaraju et al. 2017) on the last convolutional stage: for a timm backbone that is the
output of `forward_features` (the last stage's map, before global pooling), the same generic
point for every timm architecture (resnet10t, inception_resnet_v2, ...). The map's channels are
weighted by the mean gradient of the class logit over each channel, summed, passed through ReLU,
upsampled to the crop and scaled to 0..1 per cell.

Pure torch: the map is computed without gradients, then detached and made a leaf, and only the
pooling and head run under autograd, so no parameter needs `requires_grad` (frozen backbones work)
and no hook has to be registered or removed.

Imports torch, numpy and the package's models module only (matplotlib for the overlay colours).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_allbag.model.networks import MODEL_NAMES, Ensemble

#: Cells per backbone pass unless told otherwise.
DEFAULT_BATCH = 16
#: Matplotlib colormap of the overlays, and how strongly the hottest pixels are tinted.
COLORMAP = "turbo"
DEFAULT_ALPHA = 0.5

FeatureHead = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def feature_and_head(model: nn.Module) -> FeatureHead:
    """(last conv map of pixels, logits of that map) for a `Stage1Model` or a timm classifier."""
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(model, "head") and hasattr(backbone, "forward_features"):
        return backbone.forward_features, lambda fmap: model.head(backbone.forward_head(fmap))
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return model.forward_features, model.forward_head
    raise TypeError(
        f"{type(model).__name__} has neither a timm backbone with a head (Stage1Model) nor "
        "forward_features/forward_head (a timm classifier)"
    )


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode (no BatchNorm statistics updated, no dropout) for the duration, then as before."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _cams(fmaps: list[torch.Tensor], logits: torch.Tensor, target_class: int) -> torch.Tensor:
    """Grad-CAM (B, h, w) of `target_class`, averaged over the maps (each scaled to max 1)."""
    grads = torch.autograd.grad(logits[:, target_class].sum(), fmaps)
    total = None
    for fmap, grad in zip(fmaps, grads, strict=True):
        cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(dim=1))
        cam = cam / cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
        total = cam if total is None else total + cam
    return total / len(fmaps)


def _to_crop_size(cams: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling to the crop size, then each cell scaled to 0..1 (all zero stays zero)."""
    cams = F.interpolate(cams[:, None].float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]
    peak = cams.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (cams.clamp_min(0) / peak).clamp(0, 1).cpu().numpy().astype(np.float32)


def _batched_cams(
    models: list[FeatureHead],
    crops: np.ndarray,
    preprocess: nn.Module,
    target: int,
    batch_size: int,
    combine: Callable | None = None,
) -> np.ndarray:
    """Heatmaps (N, H, W) in batches of cells. Without `combine` models[0] gives the logits; with
    it each model's second function pools its map and `combine` maps the pooled features to them."""
    device = next(preprocess.buffers(), torch.zeros(0)).device
    out = []
    with torch.inference_mode(False):
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(crops[start : start + batch_size]))
            with torch.no_grad():
                pixels = preprocess(batch.to(device))
                fmaps = [features(pixels).detach().float() for features, _ in models]
            fmaps = [fmap.requires_grad_(True) for fmap in fmaps]
            with torch.enable_grad():
                if combine is None:
                    logits = models[0][1](fmaps[0])
                else:
                    logits = combine(
                        *[head(fmap) for (_, head), fmap in zip(models, fmaps, strict=True)]
                    )
                cams = _cams(fmaps, logits, target)
            out.append(_to_crop_size(cams.detach(), tuple(crops.shape[1:3])))
    return np.concatenate(out) if out else np.zeros((0, *crops.shape[1:3]), np.float32)


def _check_crops(crops) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise ValueError(f"expected uint8 crops (N, H, W, 3), got {crops.dtype} {crops.shape}")
    return crops


def grad_cam(
    model: nn.Module,
    crops: np.ndarray,
    preprocess: nn.Module,
    target_class: int = 1,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) float32 in 0..1 at crop size, for `target_class` (1 = ALL).

    `model` is a `Stage1Model` (model-A or model-B) or a timm classifier; `crops` uint8 NHWC;
    `preprocess` a `model.networks.Preprocess` (on the model's device) that turns them into its input.
    """
    crops = _check_crops(crops)
    with _eval_mode(model):
        return _batched_cams([feature_and_head(model)], crops, preprocess, target_class, batch_size)


def ensemble_grad_cam(
    ensemble: Ensemble,
    crops: np.ndarray,
    model: str = "combined",
    target_class: int = 1,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) of one of the ensemble's models (`MODEL_NAMES`).

    For "combined" the combined head's logit is traced back into both backbones' last maps and
    the two (each scaled to max 1) are averaged.
    """
    if model not in MODEL_NAMES:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    crops = _check_crops(crops)
    if model != "combined":
        stage1 = ensemble.model_a if model == "model_a" else ensemble.model_b
        return grad_cam(stage1, crops, ensemble.preprocess, target_class, batch_size)
    own = ensemble.combined_backbones
    source = own if own is not None else ensemble
    backbones = (source.model_a.backbone, source.model_b.backbone)
    pairs = [(backbone.forward_features, backbone.forward_head) for backbone in backbones]
    with _eval_mode(ensemble):
        return _batched_cams(
            pairs, crops, ensemble.preprocess, target_class, batch_size, combine=ensemble.head
        )


def overlay_heatmap(
    crop: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """RGB uint8 crop tinted by the heatmap's colours, most where the heatmap is hottest.

    Each pixel is mixed as crop * (1 - alpha * h) + colour(h) * alpha * h, so the cell stays
    visible where the model did not look. `crop` is (H, W, 3) or grey (H, W); `heatmap` (H, W).
    """
    from matplotlib import colormaps

    crop = np.asarray(crop)
    rgb = np.repeat(crop[..., None], 3, axis=-1) if crop.ndim == 2 else crop[..., :3]
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap {heat.shape} does not match the crop {rgb.shape[:2]}")
    colour = colormaps[COLORMAP](heat)[..., :3] * 255.0
    weight = float(alpha) * heat[..., None]
    mixed = rgb.astype(np.float32) * (1.0 - weight) + colour * weight
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


class CamWriter:
    """`predict --cam DIR`: keeps each file's crops as the segmentation stream passes them on,
    then writes one Grad-CAM overlay PNG per cell (the combined model's evidence for ALL) as
    `<nnnnn>_<file stem>_cell<id>_<label>.png`, nnnnn the file's position in the run."""

    def __init__(self, bundle, out_dir, batch_size: int = DEFAULT_BATCH):
        from pathlib import Path

        self.bundle = bundle
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
        self.crops: dict[str, np.ndarray] = {}
        self.files = 0

    def keep(self, item) -> None:
        """Remember a segmentation stream item's crops, for `write`."""
        crops = getattr(getattr(item, "result", None), "crops", None)
        if crops is not None and len(crops):
            self.crops[str(item.path)] = np.asarray(crops)

    def write(self, result) -> int:
        """Overlays of one `FilePredictions`' cells; returns how many were written."""
        import cv2

        from napari_allbag.io.atomic import write_bytes_atomic

        crops = self.crops.pop(str(result.path), None)
        self.files += 1
        if crops is None or result.error or not len(result.predictions):
            return 0
        heat = ensemble_grad_cam(self.bundle.ensemble, crops, "combined", 1, self.batch_size)
        ids = result.table.get("cell_id", range(1, len(crops) + 1))
        names = result.predictions.label_names
        stem = f"{self.files:05d}_{result.path.stem}"
        for i, cell_id in enumerate(ids):
            rgb = overlay_heatmap(crops[i], heat[i])
            ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
            if ok:
                name = f"{stem}_cell{int(cell_id)}_{names[i]}.png"
                write_bytes_atomic(self.out_dir / name, png.tobytes())
        return len(crops)
