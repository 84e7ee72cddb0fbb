"""Stage-2 features: model-A's and model-B's pooled feature vectors, computed once and cached.

With frozen backbones (the default) the combined model's inputs never change, so each cell's two
feature vectors are computed once (eval mode, no gradients) and stored in the run folder as
safetensors; every stage-2 epoch then runs on these vectors only.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_allbag.model.networks import Stage1Model
from napari_allbag.progress import Progress
from napari_allbag.training.batches import CropFeeder
from napari_allbag.training.checkpoint import load_tensors, save_tensors_atomic
from napari_allbag.training.loop import autocast_context


@dataclass
class FeatureSet:
    """Pooled features of model-A and model-B (N x F each, float32, CPU) and the labels."""

    features_a: torch.Tensor
    features_b: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: torch.Tensor) -> FeatureSet:
        """The cells at `index` (positions)."""
        return FeatureSet(self.features_a[index], self.features_b[index], self.labels[index])

    def save(self, path: Path) -> None:
        save_tensors_atomic(
            path,
            {"features_a": self.features_a, "features_b": self.features_b, "labels": self.labels},
        )

    @classmethod
    def load(cls, path: Path, expected_labels: torch.Tensor) -> FeatureSet | None:
        """The cached set at `path`, or None when missing or not for these cells."""
        if not Path(path).is_file():
            return None
        try:
            tensors = load_tensors(path)
            found = cls(tensors["features_a"], tensors["features_b"], tensors["labels"])
        except (ValueError, KeyError):
            return None
        if not torch.equal(found.labels, expected_labels.to(found.labels.dtype)):
            return None
        return found


def compute_features(
    model_a: Stage1Model,
    model_b: Stage1Model,
    feeder: CropFeeder,
    stage: str = "features",
    what: str = "",
    autocast_dtype: torch.dtype | None = None,
) -> Generator[Progress, None, FeatureSet]:
    """Run both backbones over the feeder's crops (in order) and return their pooled features."""
    model_a.eval()
    model_b.eval()
    device = feeder.device
    parts_a: list[torch.Tensor] = []
    parts_b: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    total = feeder.n_batches
    for done, (pixels, batch_labels) in enumerate(feeder.batches(), 1):
        with torch.no_grad(), autocast_context(device, autocast_dtype):  # not held across the yield
            features_a = model_a.forward_features(pixels)
            features_b = model_b.forward_features(pixels)
        parts_a.append(features_a.float().cpu())
        parts_b.append(features_b.float().cpu())
        labels.append(batch_labels.cpu())
        yield Progress(done, total, stage, what)
    return FeatureSet(torch.cat(parts_a), torch.cat(parts_b), torch.cat(labels))
