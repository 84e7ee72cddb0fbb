"""Batched, seeded augmentation: every op works, results are reproducible, backgrounds stay black."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_allbag.data.augment import AUGMENT_OPS, augment_batch, draw_plan, rotate
from napari_allbag.data.synthetic import make_cell


@pytest.fixture(scope="module")
def cells() -> torch.Tensor:
    """Four generated cells (uint8 NCHW, 64 px) on a black background."""
    images = [
        make_cell(label, seed, size=64)
        for label, seed in (("all", 1), ("hem", 2), ("all", 3), ("hem", 4))
    ]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _corners(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[..., :4, :4], x[..., :4, -4:], x[..., -4:, :4], x[..., -4:, -4:]], dim=-1)


def test_deterministic_and_changes_images(cells):
    original = cells.clone()
    first = augment_batch(cells, _gen(0))
    again = augment_batch(cells, _gen(0))
    other = augment_batch(cells, _gen(1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == cells.shape and first.dtype == torch.uint8
    for i in range(len(cells)):
        assert not torch.equal(first[i], cells[i])
    assert torch.equal(cells, original)  # the input is left untouched


def test_float_input_keeps_dtype_and_range(cells):
    x = cells.float() / 255
    out = augment_batch(x, _gen(3))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    half = augment_batch(x.half(), _gen(3))
    assert half.dtype == torch.float16


def test_every_image_gets_a_non_empty_combination():
    plan = draw_plan(500, 3, _gen(0))
    per_image = plan.chosen.sum(dim=1)
    assert per_image.min() >= 1
    assert (per_image == 1).any() and (per_image >= 3).any()
    assert plan.chosen.any(dim=0).all()  # every op drawn somewhere


def test_mask_limits_augmentation(cells):
    mask = torch.tensor([True, False, True, False])
    out = augment_batch(cells, _gen(0), mask=mask)
    assert torch.equal(out[1], cells[1]) and torch.equal(out[3], cells[3])
    assert not torch.equal(out[0], cells[0]) and not torch.equal(out[2], cells[2])
    assert torch.equal(augment_batch(cells, _gen(0), mask=np.zeros(4, bool)), cells)


@pytest.mark.parametrize("op", AUGMENT_OPS)
def test_each_op_alone(cells, op):
    out = augment_batch(cells, _gen(7), ops=(op,))
    assert out.shape == cells.shape and out.dtype == cells.dtype
    x, y = cells.float(), out.float()
    if op == "hflip":
        assert torch.equal(out, cells.flip(-1))
    elif op == "vflip":
        assert torch.equal(out, cells.flip(-2))
    elif op == "rotate":
        # Same cell, turned: roughly the same amount of stain, corners black.
        assert not torch.equal(out, cells)
        assert abs(y.sum() / x.sum() - 1) < 0.1
        assert _corners(out).max() <= 5
    else:
        foreground = cells.amax(dim=1, keepdim=True) > 0.04 * 255
        background = ~foreground.expand_as(cells)
        assert torch.equal(out[background], cells[background])  # black stays black
        assert (y - x)[foreground.expand_as(cells)].abs().mean() > 0.5
        if op == "noise":
            residual = (y - x)[foreground.expand_as(cells)]
            assert abs(residual.mean()) < 1.0 < residual.std() < 0.06 * 255
        if op == "contrast":
            # A contrast change moves pixels along one line per image: (x - m) * c + m.
            for i in range(len(cells)):
                fg = foreground[i].expand_as(cells[i])
                a, b = x[i][fg], y[i][fg]
                c = ((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()) ** 2).sum()
                assert 0.7 < c < 1.3 and not math.isclose(c, 1.0, abs_tol=1e-3)
        if op == "color":
            ratios = [(y[:, c].sum() / x[:, c].sum()).item() for c in range(3)]
            assert max(ratios) - min(ratios) > 1e-3


def test_rotation_keeps_black_background():
    square = torch.zeros((1, 3, 64, 64))
    square[..., 24:40, 24:40] = 1.0
    turned = rotate(square, torch.tensor([math.pi / 4]))
    assert turned[..., :10, :10].max() == 0 and turned[..., -10:, -10:].max() == 0
    assert abs(turned.sum() / square.sum() - 1) < 0.02
    quarter = rotate(square, torch.tensor([math.pi / 2]))
    assert torch.allclose(quarter, square, atol=1e-4)


def test_rejects_unknown_op_and_bad_shape(cells):
    with pytest.raises(ValueError, match="Unknown augmentation"):
        augment_batch(cells, _gen(0), ops=("blur",))
    with pytest.raises(ValueError, match="NCHW"):
        augment_batch(cells[0], _gen(0))
