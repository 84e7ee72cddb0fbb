"""training.stage2: the validation probabilities from cached features and from the crops agree
with the ensemble a bundle runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_allbag.model.networks import CombinedModel, Ensemble, Preprocess
from napari_allbag.progress import drive
from napari_allbag.training.batches import CropFeeder
from napari_allbag.training.features import compute_features
from napari_allbag.training.stage2 import ensemble_probs, probs_from_features
from tests.model_factory import make_tiny_models
from tests.training.crop_set import make_crop_set

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def crop_set(tmp_path_factory):
    return make_crop_set(tmp_path_factory.mktemp("stage2"))


def _setup(crop_set, seed: int):
    model_a, model_b, head, config = make_tiny_models(seed=seed, img_size=32)
    preprocess = Preprocess(config)
    rows = np.flatnonzero(crop_set.cache.ok)
    feeder = CropFeeder(crop_set.cache, rows, np.arange(len(rows)) % 2, 4, CPU, preprocess)
    crops = torch.from_numpy(np.ascontiguousarray(crop_set.cache.crops[rows]))
    return model_a, model_b, head, preprocess, feeder, crops


def test_probabilities_from_cached_features_are_the_ensembles(crop_set):
    model_a, model_b, head, preprocess, feeder, crops = _setup(crop_set, seed=4)
    features = drive(compute_features(model_a, model_b, feeder))
    head.train()
    probs = probs_from_features(model_a, model_b, head, features, CPU)
    assert probs.shape == (len(crops), 3, 2) and not head.training
    with torch.no_grad():
        expected = Ensemble(model_a, model_b, head, preprocess)(crops).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-6)
    feeder.close()


def test_probabilities_with_the_combined_models_own_backbones(crop_set):
    model_a, model_b, head, preprocess, feeder, crops = _setup(crop_set, seed=5)
    own_a, own_b, _, _ = make_tiny_models(seed=6, img_size=32)
    combined = CombinedModel(own_a, own_b, head)
    events = []
    probs = drive(ensemble_probs(model_a, model_b, combined, feeder, None), events.append)
    assert len(events) == feeder.n_batches and events[-1].stage == "report"
    with torch.no_grad():
        expected = Ensemble(model_a, model_b, combined, preprocess)(crops).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    shared = drive(
        ensemble_probs(model_a, model_b, CombinedModel(model_a, model_b, head), feeder, None)
    )
    assert not np.allclose(shared[:, 2], probs[:, 2], atol=1e-4)  # other backbones, other figures
    np.testing.assert_allclose(shared[:, :2], probs[:, :2], atol=1e-6)
    feeder.close()
