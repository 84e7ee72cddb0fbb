"""training.batches: crops from the crop cache and feature vectors, in batches on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from napari_allbag.model.networks import Preprocess, resolve_backbone
from napari_allbag.training.batches import (
    CropFeeder,
    FeatureBatches,
    batch_positions,
    epoch_order,
    n_batches,
)
from napari_allbag.training.loop import EpochRandom
from tests.training.crop_set import make_crop_set

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def crop_set(tmp_path_factory):
    return make_crop_set(tmp_path_factory.mktemp("batches"))


def _preprocess() -> Preprocess:
    return Preprocess(resolve_backbone("test_resnet", 32))


def test_batch_positions_never_leave_a_batch_of_one():
    assert batch_positions(7, 3) == [[0, 1, 2], [3, 4, 5, 6]]
    assert batch_positions(8, 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert batch_positions(1, 3) == [[0]]
    assert batch_positions(4, 2, torch.tensor([3, 1, 0, 2])) == [[3, 1], [0, 2]]
    assert [n_batches(n, 3) for n in (1, 3, 4, 5, 7)] == [1, 1, 1, 2, 2]


def test_epoch_order_from_the_generator_or_the_sampler():
    random = EpochRandom.for_epoch(0, "stage1-A", 2, CPU)
    assert epoch_order(10, None, None) is None
    order = epoch_order(10, random, None)
    assert sorted(order.tolist()) == list(range(10))
    again = EpochRandom.for_epoch(0, "stage1-A", 2, CPU)
    assert torch.equal(epoch_order(10, again, None), order)
    samplers = [DistributedSampler(range(10), num_replicas=2, rank=r, seed=4) for r in (0, 1)]
    shares = [epoch_order(10, random, s).tolist() for s in samplers]
    assert sorted(shares[0] + shares[1]) == list(range(10)) and len(shares[0]) == 5
    with pytest.raises(ValueError, match="covers 10 items"):
        epoch_order(9, random, samplers[0])


def test_crop_feeder_in_order_is_the_cache_preprocessed(crop_set):
    cache = crop_set.cache
    rows = np.flatnonzero(cache.ok)[::-1].copy()  # not the cache's order
    labels = np.arange(len(rows)) % 2
    feeder = CropFeeder(cache, rows, labels, 4, CPU, _preprocess())
    got = list(feeder.batches())
    assert len(feeder) == len(rows) and feeder.n_batches == len(got)
    pixels = torch.cat([p for p, _ in got])
    expected = _preprocess()(torch.from_numpy(np.asarray(cache.crops[rows])).permute(0, 3, 1, 2))
    torch.testing.assert_close(pixels, expected)
    assert torch.cat([y for _, y in got]).tolist() == labels.tolist()
    feeder.close()


def test_shuffled_epochs_are_reproducible_and_augment_only_flagged_cells(crop_set):
    cache = crop_set.cache
    rows = np.flatnonzero(cache.ok)
    labels = np.arange(len(rows))  # each cell's label names it
    flags = labels % 2 == 0
    feeder = CropFeeder(cache, rows, labels, 4, CPU, _preprocess(), augment=flags)
    plain = {}
    for pixels, seen in feeder.batches():
        plain.update({int(y): p for p, y in zip(pixels, seen, strict=True)})

    def epoch(number):
        random = EpochRandom.for_epoch(7, "stage1-A", number, CPU)
        got = list(feeder.batches(random))
        return torch.cat([p for p, _ in got]), torch.cat([y for _, y in got]).tolist()

    first, order = epoch(1)
    again, order_again = epoch(1)
    assert order == order_again and torch.equal(first, again)
    assert sorted(order) == labels.tolist() and order != labels.tolist()
    assert epoch(2)[1] != order
    for pixels, cell in zip(first, order, strict=True):
        assert torch.equal(pixels, plain[cell]) != bool(flags[cell]), cell
    feeder.close()


def test_feature_batches_cover_every_vector_once_per_epoch():
    features_a = torch.arange(14.0).reshape(7, 2)
    features_b = -features_a
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1])
    batches = FeatureBatches(features_a, features_b, labels, 3, CPU)
    assert len(batches) == 7 and batches.n_batches == 2
    random = EpochRandom.for_epoch(0, "stage2", 1, CPU)
    seen = []
    for (a, b), y in batches.batches(random):
        assert torch.equal(b, -a) and a.dtype == torch.float32
        rows = (a[:, 0] / 2).long()
        assert torch.equal(labels[rows], y)
        seen += rows.tolist()
    assert sorted(seen) == list(range(7)) and seen != list(range(7))
    in_order = [(a[:, 0] / 2).long().tolist() for (a, _), _ in batches.batches()]
    assert in_order == [[0, 1, 2], [3, 4, 5, 6]]
