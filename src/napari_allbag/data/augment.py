"""Batched, seeded image augmentation in torch (runs on the batch's device).

The paper (Sec. 2.3) augments with "randomly chosen one or combination of several" of rotation,
horizontal or vertical flip, Gaussian noise, contrast and colour-channel adjustment. Each image
gets a random non-empty combination of these, drawn afresh on every call. The ranges are ours
(the paper gives none); see `AugmentRanges`.

Cells sit on a black background (C-NMC images and our crops). Rotation fills the corners with
black, and the photometric changes (contrast, colour, noise) touch only the cell's pixels, so the
background stays black as it is at inference time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: The augmentations, in the order they are applied.
AUGMENT_OPS = ("rotate", "hflip", "vflip", "contrast", "color", "noise")


@dataclass(frozen=True)
class AugmentRanges:
    """Ranges the random parameters are drawn from (uniformly). Intensities are fractions of the
    full range (255 for uint8)."""

    noise_sigma: tuple[float, float] = (0.01, 0.05)
    contrast: tuple[float, float] = (0.75, 1.25)
    channel_gain: tuple[float, float] = (0.9, 1.1)
    channel_shift: tuple[float, float] = (-0.04, 0.04)
    #: Pixels darker than this on every channel are background and keep their value.
    background_level: float = 0.04


DEFAULT_RANGES = AugmentRanges()


@dataclass
class AugmentPlan:
    """Which augmentations each image gets (`chosen`, N x len(ops) bool) and their parameters."""

    ops: tuple[str, ...]
    chosen: torch.Tensor
    angle: torch.Tensor  # (N,) radians
    contrast: torch.Tensor  # (N,)
    gain: torch.Tensor  # (N, C)
    shift: torch.Tensor  # (N, C), fraction of the full range
    noise_sigma: torch.Tensor  # (N,), fraction of the full range

    def applies(self, op: str) -> torch.Tensor:
        """(N,) bool: which images get `op`."""
        if op not in self.ops:
            return torch.zeros(len(self.chosen), dtype=torch.bool, device=self.chosen.device)
        return self.chosen[:, self.ops.index(op)]


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator, *shape: int):
    low, high = bounds
    values = torch.rand((n, *shape), generator=generator, device=generator.device)
    return low + (high - low) * values


def draw_plan(
    n: int,
    channels: int,
    generator: torch.Generator,
    ops: tuple[str, ...] = AUGMENT_OPS,
    mask: torch.Tensor | None = None,
    ranges: AugmentRanges = DEFAULT_RANGES,
) -> AugmentPlan:
    """Draw the augmentations for `n` images: a non-empty random combination of `ops` each
    (none where `mask` is False). Always consumes the same amount of randomness for a given `n`,
    so the stream stays reproducible whatever was chosen."""
    unknown = set(ops) - set(AUGMENT_OPS)
    if unknown or not ops:
        raise ValueError(f"Unknown augmentation(s) {sorted(unknown)}; choose from {AUGMENT_OPS}.")
    device = generator.device
    chosen = torch.rand((n, len(ops)), generator=generator, device=device) < 0.5
    fallback = torch.randint(len(ops), (n,), generator=generator, device=device)
    none = ~chosen.any(dim=1)
    chosen[none, fallback[none]] = True
    if mask is not None:
        chosen &= torch.as_tensor(mask, dtype=torch.bool, device=device).reshape(n, 1)
    return AugmentPlan(
        ops=tuple(ops),
        chosen=chosen,
        angle=_uniform(n, (0.0, 2 * math.pi), generator),
        contrast=_uniform(n, ranges.contrast, generator),
        gain=_uniform(n, ranges.channel_gain, generator, channels),
        shift=_uniform(n, ranges.channel_shift, generator, channels),
        noise_sigma=_uniform(n, ranges.noise_sigma, generator),
    )


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate float NCHW `images` about their centres by `angles` (radians); black outside."""
    n, _, h, w = images.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros((n, 2, 3), dtype=images.dtype, device=images.device)
    # affine_grid works in [-1, 1] coordinates per axis; correct for non-square images.
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    mask: torch.Tensor | None = None,
    ops: tuple[str, ...] = AUGMENT_OPS,
    ranges: AugmentRanges = DEFAULT_RANGES,
    value_range: float | None = None,
) -> torch.Tensor:
    """Augment an NCHW batch (uint8 in 0..255, or float in 0..`value_range`, default 1).

    Each image (where `mask`, an (N,) bool, is True; all by default) gets a random non-empty
    combination of `ops`, drawn from `generator` (any device; the same seed gives the same
    result). Returns a new tensor of the same dtype, shape and device.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects an NCHW batch, got shape {tuple(x.shape)}")
    n, channels = x.shape[:2]
    plan = draw_plan(n, channels, generator, ops, mask, ranges)
    scale = value_range if value_range is not None else (255.0 if x.dtype == torch.uint8 else 1.0)
    return apply_plan(x, plan, generator, scale, ranges)


def apply_plan(
    x: torch.Tensor,
    plan: AugmentPlan,
    generator: torch.Generator,
    scale: float,
    ranges: AugmentRanges = DEFAULT_RANGES,
) -> torch.Tensor:
    """Apply a drawn `AugmentPlan` to `x` (see `augment_batch`).

    Each step touches only the images that need it; flips work on the original dtype, rotation
    and the photometric changes in float32.
    """
    device = x.device
    chosen = plan.chosen.to(device)
    out = x.clone()
    if not bool(chosen.any()):
        return out
    rows_of = {op: torch.nonzero(chosen[:, i]).flatten() for i, op in enumerate(plan.ops)}

    def rows(op: str) -> torch.Tensor | None:
        selected = rows_of.get(op)
        return selected if selected is not None and selected.numel() else None

    def params(values: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        return values.to(device=device, dtype=torch.float32)[selected]

    def store(selected: torch.Tensor, values: torch.Tensor) -> None:
        values = values.clamp_(0.0, scale)
        out[selected] = (
            values.round_().to(x.dtype) if x.dtype == torch.uint8 else values.to(x.dtype)
        )

    for op, dim in (("hflip", -1), ("vflip", -2)):
        if (selected := rows(op)) is not None:
            out[selected] = out[selected].flip(dim)
    if (selected := rows("rotate")) is not None:
        store(selected, rotate(out[selected].to(torch.float32), params(plan.angle, selected)))

    photometric = torch.zeros(len(out), dtype=torch.bool, device=device)
    for op in ("contrast", "color", "noise"):
        if (selected := rows(op)) is not None:
            photometric[selected] = True
    if not bool(photometric.any()):
        return out
    touched = torch.nonzero(photometric).flatten()
    work = out[touched].to(torch.float32)
    # Photometric changes act on the cell only: background pixels keep their (black) value.
    foreground = work.amax(dim=1, keepdim=True) > ranges.background_level * scale
    changed = work.clone()
    local = torch.full((len(out),), -1, dtype=torch.long, device=device)
    local[touched] = torch.arange(len(touched), device=device)

    if (selected := rows("contrast")) is not None:
        at = local[selected]
        fg = foreground[at].to(torch.float32)
        pixels = fg.sum(dim=(1, 2, 3)) * work.shape[1]
        mean = (changed[at] * fg).sum(dim=(1, 2, 3)) / pixels.clamp(min=1)
        mean = mean.view(-1, 1, 1, 1)
        factor = params(plan.contrast, selected).view(-1, 1, 1, 1)
        changed[at] = (changed[at] - mean) * factor + mean
    if (selected := rows("color")) is not None:
        at = local[selected]
        gain = params(plan.gain, selected)[:, :, None, None]
        shift = params(plan.shift, selected)[:, :, None, None] * scale
        changed[at] = changed[at] * gain + shift
    if (selected := rows("noise")) is not None:
        at = local[selected]
        noise = torch.randn(
            (len(at), *work.shape[1:]), generator=generator, device=generator.device
        ).to(device)
        sigma = params(plan.noise_sigma, selected).view(-1, 1, 1, 1) * scale
        changed[at] = changed[at] + noise * sigma
    store(touched, torch.where(foreground, changed, work))
    return out
