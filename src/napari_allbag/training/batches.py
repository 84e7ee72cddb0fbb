"""Batches for training: crops from the memory-mapped crop cache to the device, and feature vectors.

`CropFeeder` reads whole batches of uint8 crops from the cache (sorted reads from the memory map)
in DataLoader worker processes where asked, pins them, moves them to the device as uint8 (4x less
traffic than float), augments the flagged rows there (`augment.augment_batch`, drawn afresh from
the epoch's generator) and turns them into normalised float NCHW at the backbone's size
(`model.networks.Preprocess`). The batch order comes from the epoch's generator in the main process, so
worker processes hold no randomness and runs are reproducible.

`FeatureBatches` does the same for stage 2 on cached feature vectors, kept on the device.

Shuffled batches come from a `DistributedSampler` when one is given (the trainer always gives
one, also in a single process): seeded per stage, `set_epoch` each epoch, it hands this process
the positions rank, rank + W, ... of the epoch's permutation, so that with a local batch of
B / W the W processes together train on exactly the global batches of B that one process would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from napari_allbag.data.augment import augment_batch
from napari_allbag.model.networks import Preprocess
from napari_allbag.segmentation.crop_cache import CropCache
from napari_allbag.training.loop import EpochRandom

if TYPE_CHECKING:
    from napari_allbag.training.features import FeatureSet
    from napari_allbag.training.prepare import PreparedData


def batch_positions(n: int, batch_size: int, order: torch.Tensor | None = None) -> list[list[int]]:
    """`order` (or 0..n-1) cut into batches; a last batch of one is merged into the one before,
    because BatchNorm cannot train on a single sample."""
    positions = order.tolist() if order is not None else list(range(n))
    batches = [positions[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def n_batches(n: int, batch_size: int) -> int:
    return len(batch_positions(n, batch_size))


def epoch_order(
    n: int, random: EpochRandom | None, sampler: DistributedSampler | None
) -> torch.Tensor | None:
    """This process's positions for the epoch: from the sampler (set to the epoch), else a
    permutation drawn from the epoch's generator; None (in order) without `random`."""
    if random is None:
        return None
    if sampler is not None:
        if len(sampler.dataset) != n:
            raise ValueError(f"the sampler covers {len(sampler.dataset)} items, not {n}")
        sampler.set_epoch(random.epoch)
        return torch.as_tensor(list(iter(sampler)), dtype=torch.int64)
    return torch.randperm(n, generator=random.order)


def _local_count(n: int, sampler: DistributedSampler | None) -> int:
    return sampler.num_samples if sampler is not None else n


class CropBatches(Dataset):
    """Dataset whose items are whole batches: positions -> (uint8 NHWC crops, labels, flags).

    Pickles without the memory map (`CropCache` reopens it in each worker process).
    """

    def __init__(self, cache: CropCache, rows: np.ndarray, labels: np.ndarray, augment: np.ndarray):
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.augment = np.asarray(augment, dtype=bool)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]):
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")
        crops = np.empty((len(rows), *self.cache.crops.shape[1:]), dtype=np.uint8)
        crops[order] = self.cache.crops[rows[order]]
        return (
            torch.from_numpy(crops),
            torch.from_numpy(self.labels[positions]),
            torch.from_numpy(self.augment[positions]),
        )


class _BatchOrder:
    """The batches of the current epoch; the DataLoader re-reads it at every epoch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class CropFeeder:
    """Batches of preprocessed crops on the device, for training (shuffled, augmented) or not.

    Shuffled batches follow the epoch's own permutation, or a `DistributedSampler` given with
    `shuffle_with` (this process's share of each epoch's permutation).
    """

    def __init__(
        self,
        cache: CropCache,
        rows: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        preprocess: Preprocess,
        augment: np.ndarray | None = None,
        workers: int = 0,
    ):
        self.device = torch.device(device)
        self.sampler: DistributedSampler | None = None
        self.batch_size = int(batch_size)
        self.preprocess = preprocess.to(self.device)
        flags = np.zeros(len(rows), bool) if augment is None else np.asarray(augment, bool)
        self.dataset = CropBatches(cache, rows, labels, flags)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self._order = _BatchOrder()
        workers = max(0, int(workers))
        self._loader = DataLoader(
            self.dataset,
            batch_size=None,
            sampler=self._order,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def shuffle_with(self, sampler: DistributedSampler | None) -> CropFeeder:
        """Draw the shuffled batches from `sampler` (None: the epoch's permutation); returns self."""
        self.sampler = sampler
        return self

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def n_batches(self) -> int:
        """Batches per shuffled epoch (this process's share when a sampler is given)."""
        return n_batches(_local_count(len(self.dataset), self.sampler), self.batch_size)

    def batches(
        self, random: EpochRandom | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(pixels, labels) on the device: shuffled and augmented with `random`, else in order."""
        n = len(self.dataset)
        order = epoch_order(n, random, self.sampler)
        count = n if order is None else len(order)
        self._order.batches = batch_positions(count, self.batch_size, order)
        non_blocking = self.device.type == "cuda"
        for crops, labels, flags in self._loader:
            crops = crops.to(self.device, non_blocking=non_blocking).permute(0, 3, 1, 2)
            labels = labels.to(self.device, non_blocking=non_blocking)
            if random is not None and bool(flags.any()):
                mask = flags.to(self.device, non_blocking=non_blocking)
                crops = augment_batch(crops, random.augment, mask=mask)
            yield self.preprocess(crops), labels

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._loader = None


@dataclass(frozen=True)
class CropSource:
    """Where a run's crop batches come from: the prepared data's crop cache, read onto `device`
    by `workers` DataLoader processes and preprocessed for the backbone."""

    data: PreparedData
    device: torch.device
    preprocess: Preprocess
    workers: int

    def feeder(
        self,
        positions: np.ndarray,
        batch_size: int,
        augment: np.ndarray | None = None,
        sampler: DistributedSampler | None = None,
    ) -> CropFeeder:
        """A `CropFeeder` over the cells at `positions` (into the data's rows and labels)."""
        return CropFeeder(
            self.data.cache,
            self.data.rows[positions],
            self.data.labels[positions],
            batch_size,
            self.device,
            self.preprocess,
            augment=augment,
            workers=self.workers,
        ).shuffle_with(sampler)


class FeatureBatches:
    """Stage-2 batches of cached feature vectors (model-A's, model-B's) and labels on the device."""

    def __init__(
        self,
        features_a: torch.Tensor,
        features_b: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        sampler: DistributedSampler | None = None,
    ):
        self.sampler = sampler
        self.features_a = features_a.to(device, torch.float32)
        self.features_b = features_b.to(device, torch.float32)
        self.labels = labels.to(device, torch.int64)
        self.batch_size = int(batch_size)

    @classmethod
    def of(
        cls,
        features: FeatureSet,
        batch_size: int,
        device: torch.device,
        sampler: DistributedSampler | None = None,
    ) -> FeatureBatches:
        """Batches of a `features.FeatureSet`."""
        return cls(
            features.features_a,
            features.features_b,
            features.labels,
            batch_size,
            device,
            sampler=sampler,
        )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_batches(self) -> int:
        return n_batches(_local_count(len(self.labels), self.sampler), self.batch_size)

    def batches(self, random: EpochRandom | None = None):
        n = len(self.labels)
        order = epoch_order(n, random, self.sampler)
        count = n if order is None else len(order)
        for positions in batch_positions(count, self.batch_size, order):
            index = torch.as_tensor(positions, device=self.labels.device)
            yield (self.features_a[index], self.features_b[index]), self.labels[index]
