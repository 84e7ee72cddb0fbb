"""Test-time augmentation: the ensemble on the 8 dihedral views of each crop, averaged.

A blood cell has no "up": its eight flips and 90-degree rotations are the same cell, so averaging
the ensemble over them removes part of the orientation noise (Prellberg & Kramer used 8-rotation
TTA on C-NMC), and the spread across views says how much the call depends on orientation.

Cost: the views of several cells are stacked into one batch, so each backbone runs once per batch
of views (8 images per cell), about 8x one pass, not 16x or 24x (`benchmarks/bench_tta.py`).
Crops travel to the device once, as uint8, and are rotated there.

Imports torch, numpy and the package's pure modules only.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from napari_allbag.model.rules import DEFAULT_RULE, rule_p_all
from napari_allbag.progress import Progress, drive

N_VIEWS = 8
#: Images per ensemble call unless told otherwise (8 views of 8 cells).
DEFAULT_BATCH = 64


def dihedral_views(crops):
    """The 8 dihedral views (view, N, H, W, C) of square NHWC crops: numpy in numpy out, torch too.

    Views 0-3 rotate the crops by 0, 90, 180 and 270 degrees; views 4-7 do the same to the crops
    mirrored left-right. View 0 is the crops themselves.
    """
    if crops.ndim != 4 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"expected square crops (N, S, S, C), got shape {tuple(crops.shape)}")
    if isinstance(crops, torch.Tensor):
        mirrored = torch.flip(crops, dims=(2,))
        views = [torch.rot90(x, k, dims=(1, 2)) for x in (crops, mirrored) for k in range(4)]
        return torch.stack(views)
    crops = np.asarray(crops)
    views = [np.rot90(x, k, axes=(1, 2)) for x in (crops, crops[:, :, ::-1]) for k in range(4)]
    return np.stack(views)


def _module_device(module: torch.nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _views_probs(ensemble: torch.nn.Module, crops: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities (8, n, 3, 2) of the views of `crops`, in ensemble calls of <= batch_size."""
    device = _module_device(ensemble)
    views = dihedral_views(torch.from_numpy(np.ascontiguousarray(crops)).to(device))
    flat = views.reshape(-1, *views.shape[2:])
    with torch.inference_mode():
        parts = [
            ensemble(flat[i : i + batch_size]).float() for i in range(0, len(flat), batch_size)
        ]
    probs = torch.cat(parts).cpu().numpy()
    return probs.reshape(N_VIEWS, len(crops), *probs.shape[1:])


def iter_classify_tta(
    ensemble: torch.nn.Module,
    crops: np.ndarray,
    batch_size: int = DEFAULT_BATCH,
    rule: str = DEFAULT_RULE,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """`classify_tta` as a progress generator (yields cells done, returns its result)."""
    crops = np.asarray(crops)
    if crops.dtype != np.uint8:
        raise ValueError(f"expected uint8 crops, got {crops.dtype}")
    cells_per_call = max(1, int(batch_size) // N_VIEWS)
    mean_probs, spread = [], []
    yield Progress(0, len(crops), "tta")
    for start in range(0, len(crops), cells_per_call):
        views = _views_probs(ensemble, crops[start : start + cells_per_call], int(batch_size))
        mean_probs.append(views.mean(axis=0))
        view_p_all = rule_p_all(views.reshape(-1, *views.shape[2:]), rule)
        spread.append(view_p_all.reshape(N_VIEWS, -1).std(axis=0))
        yield Progress(min(start + cells_per_call, len(crops)), len(crops), "tta")
    if not mean_probs:
        return np.zeros((0, 3, 2), np.float32), np.zeros(0, np.float32)
    return np.concatenate(mean_probs), np.concatenate(spread).astype(np.float32)


def classify_tta(
    ensemble: torch.nn.Module,
    crops: np.ndarray,
    batch_size: int = DEFAULT_BATCH,
    rule: str = DEFAULT_RULE,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities (N, 3, 2) over the 8 dihedral views, and the spread (N,) per cell.

    `ensemble` maps a uint8 NHWC batch on its own device to probabilities (B, 3, 2) (a
    `model.networks.Ensemble`); `crops` are uint8 (N, S, S, 3). At most `batch_size` images go through the
    ensemble at once (the 8 views of batch_size // 8 cells). The spread is the standard deviation,
    across the 8 views, of the ensemble's P(ALL) under `rule` (`model.rules.rule_p_all`): the
    orientation dependence of the very number the user is shown. Decide on the mean probabilities
    with `model.rules.decide_rule`.
    """
    return drive(iter_classify_tta(ensemble, crops, batch_size, rule))
