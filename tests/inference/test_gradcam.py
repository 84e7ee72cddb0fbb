"""Grad-CAM: a model trained to look at one corner lights that corner; timm backbones work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_allbag.inference.gradcam import ensemble_grad_cam, grad_cam, overlay_heatmap
from napari_allbag.model.networks import (
    BackboneConfig,
    Ensemble,
    Preprocess,
    Stage1Model,
    create_backbone,
    resolve_backbone,
)
from tests.model_factory import make_tiny_models

SIZE = 32


class TinyBackbone(nn.Module):
    """Two convolutions with timm's interface: forward_features (map), forward_head (pooled)."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, stride=2),
            nn.ReLU(),
        )

    def forward_features(self, x):
        return self.convs(x)

    def forward_head(self, fmap):
        return fmap.mean(dim=(2, 3))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _corner_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise crops; ALL ones (label 1) carry a red square in the top-RIGHT quadrant, only there."""
    crops = rng.integers(0, 200, (n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    crops[labels == 1, 3:13, SIZE - 13 : SIZE - 3] = (250, 30, 30)
    return crops, labels


def _quadrant_mass(heat: np.ndarray) -> np.ndarray:
    """Heat per quadrant (N, 4): top-left, top-right, bottom-left, bottom-right."""
    half = SIZE // 2
    parts = [
        heat[:, :half, :half],
        heat[:, :half, half:],
        heat[:, half:, :half],
        heat[:, half:, half:],
    ]
    return np.stack([part.sum(axis=(1, 2)) for part in parts], axis=1)


@pytest.fixture(scope="module")
def corner_model() -> tuple[Stage1Model, Preprocess]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Stage1Model(TinyBackbone())
    preprocess = Preprocess(BackboneConfig("tiny", SIZE, (0.5,) * 3, (0.5,) * 3))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only contend on a shared machine
    for _ in range(25):
        crops, labels = _corner_images(32, rng)
        loss = nn.functional.cross_entropy(
            model(preprocess(torch.from_numpy(crops))), torch.from_numpy(labels)
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    return model.eval(), preprocess


def test_cam_of_a_corner_looking_model_lights_that_corner(corner_model):
    model, preprocess = corner_model
    crops, labels = _corner_images(16, np.random.default_rng(1))
    with torch.no_grad():
        accuracy = (model(preprocess(torch.from_numpy(crops))).argmax(1).numpy() == labels).mean()
    assert accuracy == 1.0  # it learnt the corner
    heat = grad_cam(model, crops[labels == 1], preprocess, target_class=1, batch_size=3)
    assert heat.shape == (8, SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    mass = _quadrant_mass(heat)
    assert np.all(mass.argmax(axis=1) == 1)  # top-right, every cell
    assert np.all(mass[:, 1] > 2 * np.delete(mass, 1, axis=1).max(axis=1))
    assert not model.training


def test_model_mode_is_restored_and_bad_input_refused(corner_model):
    model, preprocess = corner_model
    model.train()
    try:
        grad_cam(model, _corner_images(2, np.random.default_rng(2))[0], preprocess)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="uint8"):
        grad_cam(model, np.zeros((1, SIZE, SIZE, 3), np.float32), preprocess)
    with pytest.raises(TypeError, match="forward_features"):
        grad_cam(nn.Linear(2, 2), np.zeros((1, SIZE, SIZE, 3), np.uint8), preprocess)


@pytest.mark.parametrize(("name", "size"), [("resnet10t", 64), ("inception_resnet_v2", 96)])
def test_timm_backbones_give_heatmaps_at_crop_size(name, size):
    torch.manual_seed(0)
    model = Stage1Model(create_backbone(name, pretrained=False)).eval()
    preprocess = Preprocess(resolve_backbone(name, img_size=size))
    crops = np.random.default_rng(0).integers(0, 256, (2, 80, 80, 3), dtype=np.uint8)
    heat = grad_cam(model, crops, preprocess)
    assert heat.shape == (2, 80, 80)
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0


def test_ensemble_cams_for_each_model():
    model_a, model_b, head, config = make_tiny_models(seed=1, img_size=48)
    ensemble = Ensemble(model_a, model_b, head, Preprocess(config)).eval()
    crops = np.random.default_rng(3).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    single = grad_cam(model_a, crops, ensemble.preprocess)
    assert np.array_equal(ensemble_grad_cam(ensemble, crops, "model_a"), single)
    combined = ensemble_grad_cam(ensemble, crops, "combined", batch_size=2)
    assert combined.shape == (3, 48, 48) and combined.min() >= 0.0 and combined.max() <= 1.0
    with pytest.raises(ValueError, match="unknown model"):
        ensemble_grad_cam(ensemble, crops, "model_c")


def test_overlay_tints_hot_pixels_and_keeps_cold_ones():
    crop = np.full((10, 10, 3), 120, np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[:5] = 1.0
    out = overlay_heatmap(crop, heat)
    assert out.dtype == np.uint8 and out.shape == (10, 10, 3)
    assert np.array_equal(out[5:], crop[5:])
    assert not np.array_equal(out[:5], crop[:5])
    assert overlay_heatmap(crop[..., 0], heat).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="does not match"):
        overlay_heatmap(crop, heat[:5])
