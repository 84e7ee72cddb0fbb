"""training.features: both backbones' pooled features over the crops, cached in the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_allbag.model.networks import Preprocess
from napari_allbag.progress import drive
from napari_allbag.training.batches import CropFeeder
from napari_allbag.training.features import FeatureSet, compute_features
from tests.model_factory import make_tiny_models
from tests.training.crop_set import make_crop_set

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def crop_set(tmp_path_factory):
    return make_crop_set(tmp_path_factory.mktemp("features"))


def test_features_are_each_backbones_in_eval_mode_and_in_order(crop_set):
    model_a, model_b, _, config = make_tiny_models(seed=3, img_size=32)
    model_a.train(), model_b.train()
    preprocess = Preprocess(config)
    rows = np.flatnonzero(crop_set.cache.ok)
    labels = np.arange(len(rows)) % 2
    feeder = CropFeeder(crop_set.cache, rows, labels, 3, CPU, preprocess)
    events = []
    features = drive(compute_features(model_a, model_b, feeder, what="cells"), events.append)
    assert [e.done for e in events] == list(range(1, feeder.n_batches + 1))
    assert {e.total for e in events} == {feeder.n_batches} and events[0].stage == "features"
    assert not model_a.training and not model_b.training
    pixels = preprocess(
        torch.from_numpy(np.asarray(crop_set.cache.crops[rows])).permute(0, 3, 1, 2)
    )
    with torch.no_grad():
        torch.testing.assert_close(features.features_a, model_a.forward_features(pixels))
        torch.testing.assert_close(features.features_b, model_b.forward_features(pixels))
    assert not torch.allclose(features.features_a, features.features_b)
    assert features.labels.tolist() == labels.tolist() and len(features) == len(rows)
    feeder.close()


def test_the_cache_is_used_only_for_the_same_cells(tmp_path):
    generator = torch.Generator().manual_seed(0)
    found = FeatureSet(
        torch.randn(5, 4, generator=generator),
        torch.randn(5, 6, generator=generator),
        torch.tensor([0, 1, 1, 0, 1]),
    )
    path = tmp_path / "features" / "val.safetensors"
    path.parent.mkdir()
    assert FeatureSet.load(path, found.labels) is None  # not there yet
    found.save(path)
    loaded = FeatureSet.load(path, found.labels)
    assert torch.equal(loaded.features_a, found.features_a)
    assert torch.equal(loaded.features_b, found.features_b)
    assert FeatureSet.load(path, torch.tensor([0, 1, 1, 0, 0])) is None  # other cells
    path.write_bytes(b"not safetensors")
    assert FeatureSet.load(path, found.labels) is None
