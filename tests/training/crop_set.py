"""A small generated annotated folder and its crop cache, shared by the training-data tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.progress import drive
from napari_allbag.segmentation.crop_cache import CropCache, build_crop_cache
from napari_allbag.segmentation.dark import SegmentationParams

N_ALL, N_HEM, N_SUBJECTS, CROP = 6, 5, 2, 48


@dataclass
class CropSet:
    data_dir: Path
    cache_dir: Path
    paths: list[Path]
    cache: CropCache


def make_crop_set(root: Path) -> CropSet:
    data_dir, cache_dir = root / "cells", root / "cache"
    write_annotated_folder(
        data_dir, n_all=N_ALL, n_hem=N_HEM, n_subjects=N_SUBJECTS, seed=3, size=96
    )
    paths = sorted(data_dir.rglob("*.bmp"))
    params = SegmentationParams(crop_size=CROP, largest_only=True)
    cache = drive(build_crop_cache(paths, params, cache_dir, workers=1))
    return CropSet(data_dir, cache_dir, paths, cache)
