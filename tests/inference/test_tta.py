"""Test-time augmentation: the 8 dihedral views, batching, and zero spread on a symmetric cell."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_allbag.inference.tta import classify_tta, dihedral_views, iter_classify_tta
from napari_allbag.model.networks import Ensemble, Preprocess
from napari_allbag.progress import Progress
from tests.model_factory import make_tiny_models

SIZE = 48


@pytest.fixture(scope="module")
def ensemble() -> Ensemble:
    model_a, model_b, head, config = make_tiny_models(seed=3, img_size=SIZE)
    return Ensemble(model_a, model_b, head, Preprocess(config)).eval()


class CallRecorder(torch.nn.Module):
    """Wraps an ensemble and records the batch size of every call."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(int(x.shape[0]))
        return self.inner(x)


def _random_crops(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _disc(size: int = SIZE) -> np.ndarray:
    """A radially symmetric stained cell centred on the crop: dark nucleus in a lighter ring."""
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    shade = np.clip(255 - 9 * radius, 0, 255)
    rgb = np.stack([shade * 0.6, shade * 0.3, shade * 0.9], axis=-1)
    rgb[radius < size / 6] = (60, 20, 110)
    return rgb.astype(np.uint8)


def test_views_are_the_eight_distinct_dihedral_transforms():
    crop = _random_crops(1, size=5)[0]
    views = dihedral_views(crop[None])[:, 0]
    expected = [
        crop,
        np.rot90(crop),
        crop[::-1, ::-1],
        np.rot90(crop, 3),
        crop[:, ::-1],
        crop[::-1, :],
        crop.transpose(1, 0, 2),
        crop[::-1, ::-1].transpose(1, 0, 2),
    ]
    as_set = {view.tobytes() for view in views}
    assert len(as_set) == 8
    assert as_set == {view.tobytes() for view in expected}
    assert np.array_equal(views[0], crop)
    torch_views = dihedral_views(torch.from_numpy(crop[None].copy()))
    assert np.array_equal(torch_views.numpy(), dihedral_views(crop[None]))
    with pytest.raises(ValueError, match="square"):
        dihedral_views(np.zeros((1, 4, 5, 3), np.uint8))


def test_symmetric_cell_has_zero_spread_and_an_asymmetric_one_does_not(ensemble):
    crops = np.stack([_disc(), _disc(), _random_crops(1, seed=5)[0]])
    probs, spread = classify_tta(ensemble, crops, batch_size=24)
    assert probs.shape == (3, 3, 2) and spread.shape == (3,)
    assert spread[:2] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert spread[2] > 1e-4
    with torch.inference_mode():
        one_pass = ensemble(torch.from_numpy(crops[:1])).numpy()
    assert probs[0] == pytest.approx(one_pass[0], abs=1e-5)


def test_mean_equals_separate_passes_and_batches_respect_the_limit(ensemble):
    crops = _random_crops(5, seed=1)
    recorder = CallRecorder(ensemble)
    probs, spread = classify_tta(recorder, crops, batch_size=16)
    assert recorder.batches == [16, 16, 8]  # 2 cells x 8 views per call, then the last cell
    views = dihedral_views(crops)
    with torch.inference_mode():
        separate = np.stack([ensemble(torch.from_numpy(v.copy())).numpy() for v in views])
    assert probs == pytest.approx(separate.mean(axis=0), abs=1e-5)
    assert probs.sum(axis=-1) == pytest.approx(np.ones((5, 3)), abs=1e-5)
    small = CallRecorder(ensemble)
    small_probs, small_spread = classify_tta(small, crops[:1], batch_size=3)
    assert small.batches == [3, 3, 2]
    assert small_probs == pytest.approx(probs[:1], abs=1e-5)
    assert small_spread == pytest.approx(spread[:1], abs=1e-5)


def test_progress_generator_and_empty_input(ensemble):
    work = iter_classify_tta(ensemble, _random_crops(3), batch_size=8)
    events = []
    while True:
        try:
            events.append(next(work))
        except StopIteration as stop:
            probs, spread = stop.value
            break
    assert all(isinstance(event, Progress) for event in events)
    assert [event.done for event in events] == [0, 1, 2, 3]
    assert probs.shape == (3, 3, 2) and spread.shape == (3,)
    empty_probs, empty_spread = classify_tta(ensemble, np.zeros((0, SIZE, SIZE, 3), np.uint8))
    assert empty_probs.shape == (0, 3, 2) and empty_spread.shape == (0,)
    with pytest.raises(ValueError, match="uint8"):
        classify_tta(ensemble, np.zeros((1, SIZE, SIZE, 3), np.float32))
