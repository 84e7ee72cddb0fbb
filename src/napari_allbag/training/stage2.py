"""Stage-2 helpers: cached backbone features, and validation probabilities for the report."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch

from napari_allbag.model.networks import Stage1Model
from napari_allbag.progress import Progress
from napari_allbag.training.batches import CropFeeder, CropSource
from napari_allbag.training.distributed import Distributed, DistributedError
from napari_allbag.training.features import FeatureSet, compute_features
from napari_allbag.training.loop import autocast_context


def cached_features(
    models: tuple[Stage1Model, Stage1Model],
    crops: CropSource,
    val_feeder: CropFeeder,
    batch_size: int,
    folder: Path,
    dtype: torch.dtype | None,
    dist: Distributed,
) -> Generator[Progress, None, tuple[FeatureSet, FeatureSet]]:
    """Features of the training and validation cells, from the run folder or computed now.

    `folder`: where the run keeps them (`train.safetensors`, `val.safetensors`). Under DDP every
    rank computes its share (val_feeder already holds this rank's share) and the shares are
    gathered, so each rank ends with all features; rank 0 stores them.
    """
    sets = []
    for what, positions in (("train", crops.data.train), ("val", crops.data.val)):
        path = folder / f"{what}.safetensors"
        labels = torch.as_tensor(crops.data.labels[positions])
        found = load_shared_features(dist, path, labels, what)
        if found is None:
            if what == "val":
                feeder = val_feeder
            else:
                feeder = crops.feeder(dist.shard(positions), batch_size)
            try:
                found = yield from compute_features(
                    *models, feeder, "features", f"{what} cells", dtype
                )
            finally:
                if feeder is not val_feeder:
                    feeder.close()
            found = _gathered(found, labels, what, dist)
            if dist.is_main:
                found.save(path)
        else:
            yield Progress(1, 1, "features", f"{what} features cached")
        sets.append(found)
    return sets[0], sets[1]


def _gathered(mine: FeatureSet, labels: torch.Tensor, what: str, dist: Distributed) -> FeatureSet:
    """Every rank's share of a feature set, gathered in the cells' order (one process: `mine`)."""
    if not dist.is_distributed:
        return mine
    found = FeatureSet(
        dist.gather_interleaved(mine.features_a, f"{what} features"),
        dist.gather_interleaved(mine.features_b, f"{what} features"),
        dist.gather_interleaved(mine.labels, f"{what} features"),
    )
    if not torch.equal(found.labels, labels.to(found.labels.dtype)):
        raise DistributedError(f"The gathered {what} features do not line up with their cells.")
    return found


def load_shared_features(
    dist: Distributed, path: Path, labels: torch.Tensor, what: str
) -> FeatureSet | None:
    """The cached feature set as rank 0 finds it in the run folder, on every rank."""
    if not dist.is_distributed:
        return FeatureSet.load(path, labels)
    found: list[FeatureSet | None] = [None]

    def read() -> bool:
        found[0] = FeatureSet.load(path, labels)
        return found[0] is not None

    if not dist.share(read, where=f"reading the cached {what} features"):
        return None
    mine = found[0]
    tensors = dist.broadcast_tensors(
        {"features_a": mine.features_a, "features_b": mine.features_b, "labels": mine.labels}
        if mine is not None
        else None,
        f"sharing the cached {what} features",
    )
    return FeatureSet(tensors["features_a"], tensors["features_b"], tensors["labels"])


def probs_from_features(model_a, model_b, head, features: FeatureSet, device) -> np.ndarray:
    """(N, 3, 2) validation probabilities of model-A, model-B and the combined head."""
    model_a.eval()
    model_b.eval()
    head.eval()
    with torch.no_grad():
        fa = features.features_a.to(device)
        fb = features.features_b.to(device)
        logits = torch.stack(
            [model_a.forward_head(fa), model_b.forward_head(fb), head(fa, fb)], dim=1
        )
    return logits.float().softmax(dim=-1).cpu().numpy()


def ensemble_probs(model_a, model_b, combined, feeder: CropFeeder, dtype):
    """(N, 3, 2) validation probabilities with the fine-tuned combined model's own backbones."""
    for module in (model_a, model_b, combined):
        module.eval()
    parts = []
    total = feeder.n_batches
    for done, (pixels, _labels) in enumerate(feeder.batches(), 1):
        with torch.no_grad(), autocast_context(feeder.device, dtype):  # not across the yield
            logits = torch.stack([model_a(pixels), model_b(pixels), combined(pixels)], dim=1)
        parts.append(logits.float().softmax(dim=-1).cpu())
        yield Progress(done, total, "report", "validation predictions")
    return torch.cat(parts).numpy()
