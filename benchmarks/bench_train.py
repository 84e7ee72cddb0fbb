"""Training benchmark on CPU: stage-1 images/s, and a stage-2 epoch on cached features against one
that runs the frozen backbones (issue 4: target at least 20x faster).

    python benchmarks/bench_train.py                       # resnet10t at 128 px, 256 cells
    python benchmarks/bench_train.py --backbone inception_resnet_v2 --img-size 299 --cells 64

Uses the trainer's own pieces on generated C-NMC-like cells: the crop cache, `CropFeeder`
(memory-mapped uint8 crops -> augmentation -> normalisation), `fit_stage`'s RMSprop step, and
`FeatureBatches` for stage 2. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_allbag.data.bagging import make_bagging_subsets
from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.io.images import find_images
from napari_allbag.model.networks import (
    CombinedHead,
    Preprocess,
    Stage1Model,
    create_backbone,
    resolve_backbone,
)
from napari_allbag.progress import drive
from napari_allbag.segmentation.crop_cache import build_crop_cache
from napari_allbag.segmentation.dark import SegmentationParams
from napari_allbag.training.batches import CropFeeder, FeatureBatches
from napari_allbag.training.features import compute_features
from napari_allbag.training.loop import EpochRandom, make_rmsprop


def _cells(root: Path, n_cells: int, crop: int, size: int):
    n_all = (2 * n_cells) // 3
    write_annotated_folder(
        root / "data", n_all=n_all, n_hem=n_cells - n_all, n_subjects=3, seed=0, size=size
    )
    paths = find_images([root / "data"])
    labels = np.array([1 if p.parent.name == "all" else 0 for p in paths])
    params = SegmentationParams(crop_size=crop, largest_only=True)
    cache = drive(build_crop_cache(paths, params, root / "cache", workers=1))
    return cache, cache.rows(paths), labels


def _stage1(args, cache, rows, labels, preprocess) -> float:
    """Images/s of stage-1 training on set A (half augmented), one epoch after a warm-up."""
    torch.manual_seed(0)
    model = Stage1Model(create_backbone(args.backbone, pretrained=False)).train()
    optimizer = make_rmsprop(model.parameters(), 1e-3)
    subset_a, _ = make_bagging_subsets(labels, seed=0)
    feeder = CropFeeder(
        cache,
        rows[subset_a.indices],
        labels[subset_a.indices],
        args.batch_size,
        torch.device("cpu"),
        preprocess,
        augment=subset_a.augment,
        workers=args.workers,
    )
    seen, seconds = 0, 0.0
    for epoch in range(2):
        start = time.perf_counter()
        count = 0
        for pixels, batch_labels in feeder.batches(
            EpochRandom.for_epoch(0, "bench", epoch, torch.device("cpu"))
        ):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(pixels), batch_labels).backward()
            optimizer.step()
            count += len(batch_labels)
        if epoch > 0:  # the first epoch is the warm-up
            seen, seconds = count, time.perf_counter() - start
    feeder.close()
    print(
        f"stage 1: {args.backbone} at {args.img_size}px, batch {args.batch_size}, set A of "
        f"{len(subset_a)} entries ({int(subset_a.augment.sum())} augmented): "
        f"{seen / seconds:.1f} images/s ({seconds:.2f} s per epoch)"
    )
    return seen / seconds


def _stage2(args, cache, rows, labels, preprocess) -> float:
    """A stage-2 epoch on cached features against one that runs both frozen backbones."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    model_a = Stage1Model(create_backbone(args.backbone, pretrained=False)).eval()
    model_b = Stage1Model(create_backbone(args.backbone, pretrained=False)).eval()
    head = CombinedHead(model_a.num_features, model_b.num_features).train()
    optimizer = make_rmsprop(head.parameters(), 1e-3)
    weights = torch.tensor([1.0, 2.5])
    feeder = CropFeeder(
        cache, rows, labels, args.batch_size, device, preprocess, workers=args.workers
    )

    def head_step(fa, fb, y):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(fa, fb), y, weight=weights).backward()
        optimizer.step()

    start = time.perf_counter()
    features = drive(compute_features(model_a, model_b, feeder))
    cache_seconds = time.perf_counter() - start
    batches = FeatureBatches(
        features.features_a, features.features_b, features.labels, args.batch_size, device
    )
    timings = []
    for epoch in range(4):
        start = time.perf_counter()
        for (fa, fb), y in batches.batches(EpochRandom.for_epoch(0, "bench2", epoch, device)):
            head_step(fa, fb, y)
        timings.append(time.perf_counter() - start)
    cached = float(np.median(timings[1:]))

    start = time.perf_counter()
    for pixels, y in feeder.batches(EpochRandom.for_epoch(0, "bench2", 9, device)):
        with torch.no_grad():
            fa, fb = model_a.forward_features(pixels), model_b.forward_features(pixels)
        head_step(fa, fb, y)
    running = time.perf_counter() - start
    feeder.close()
    print(
        f"stage 2: {len(labels)} cells, batch {args.batch_size}: epoch on cached features "
        f"{cached * 1000:.1f} ms, epoch running both backbones {running * 1000:.0f} ms -> "
        f"{running / cached:.0f}x faster (computing the features once: {cache_seconds:.2f} s)"
    )
    return running / cached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--cells", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    resolve_backbone(args.backbone, args.img_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as folder:
        cache, rows, labels = _cells(
            Path(folder), args.cells, args.img_size, size=max(128, args.img_size * 3 // 2)
        )
        preprocess = Preprocess(resolve_backbone(args.backbone, args.img_size))
        _stage1(args, cache, rows, labels, preprocess)
        _stage2(args, cache, rows, labels, preprocess)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
