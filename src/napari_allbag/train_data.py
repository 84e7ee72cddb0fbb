"""Batches for training: crops from the memory-mapped crop cache to the device, and feature vectors.

`CropFeeder` reads whole batches of uint8 crops from the cache (sorted reads from the memory map)
in DataLoader worker processes where asked, pins them, moves them to the device as uint8 (4x less
traffic than float), augments the flagged rows there (`augment.augment_batch`, drawn afresh from
the epoch's generator) and turns them into normalised float NCHW at the backbone's size
(`models.Preprocess`). The batch order comes from the epoch's generator in the main process, so
worker processes hold no randomness and runs are reproducible.

`FeatureBatches` does the same for stage 2 on cached feature vectors, kept on the device.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from napari_allbag.augment import augment_batch
from napari_allbag.crop_cache import CropCache
from napari_allbag.models import Preprocess
from napari_allbag.train_loop import EpochRandom


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
    """Batches of preprocessed crops on the device, for training (shuffled, augmented) or not."""

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

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def n_batches(self) -> int:
        return n_batches(len(self.dataset), self.batch_size)

    def batches(
        self, random: EpochRandom | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(pixels, labels) on the device: shuffled and augmented with `random`, else in order."""
        n = len(self.dataset)
        order = torch.randperm(n, generator=random.order) if random is not None else None
        self._order.batches = batch_positions(n, self.batch_size, order)
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


class FeatureBatches:
    """Stage-2 batches of cached feature vectors (model-A's, model-B's) and labels on the device."""

    def __init__(
        self,
        features_a: torch.Tensor,
        features_b: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
    ):
        self.features_a = features_a.to(device, torch.float32)
        self.features_b = features_b.to(device, torch.float32)
        self.labels = labels.to(device, torch.int64)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_batches(self) -> int:
        return n_batches(len(self.labels), self.batch_size)

    def batches(self, random: EpochRandom | None = None):
        n = len(self.labels)
        order = torch.randperm(n, generator=random.order) if random is not None else None
        for positions in batch_positions(n, self.batch_size, order):
            index = torch.as_tensor(positions, device=self.labels.device)
            yield (self.features_a[index], self.features_b[index]), self.labels[index]
