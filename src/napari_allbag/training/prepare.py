"""A run's data: scan, segment into the crop cache, split 7:3 by subject, bagging sets.

Rank 0 prepares it; `data_to_json` / `data_from_json` hand it to the other ranks. Its events are
the run's first three steps (`training.steps`): scanning, segmenting, caching crops.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.data.annotations import AnnotationError, check_classes, scan_annotated_folder
from napari_allbag.data.bagging import make_bagging_subsets
from napari_allbag.data.splits import split_train_val
from napari_allbag.io.atomic import write_json_atomic, write_text_atomic
from napari_allbag.progress import Progress, retold
from napari_allbag.segmentation.crop_cache import (
    CROPS_FILE,
    CropCache,
    build_crop_cache,
    default_cache_dir,
)
from napari_allbag.segmentation.dark import SegmentationParams, default_workers
from napari_allbag.training.config import RunPaths, TrainConfig, TrainingError
from napari_allbag.training.steps import CACHE, SCAN, SEGMENT, numbered, step_event


@dataclass
class PreparedData:
    """The preprocessed cells of a run: crops, labels, subjects, the split."""

    cache: CropCache
    rows: np.ndarray  # crop-cache row of each usable cell
    labels: np.ndarray
    subjects: list[str | None]
    files: list[str]
    train: np.ndarray  # positions into rows/labels
    val: np.ndarray
    split_note: str


def segmentation_params(config: TrainConfig) -> SegmentationParams:
    values = {**config.segmentation, "crop_size": config.crop_size, "largest_only": True}
    try:
        return SegmentationParams.from_dict(values)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"Invalid segmentation settings: {error}") from error


def preprocess_cells(
    config: TrainConfig, paths: RunPaths
) -> Generator[Progress, None, PreparedData]:
    """Scan the annotated folder, crop every image once (the cache), split 7:3 by subject, and
    write the data summary (rank 0)."""
    yield step_event(SCAN, f"scanning {config.data_dir}")
    annotated = scan_annotated_folder(config.data_dir, config.subjects_csv)
    count = len(annotated.paths)
    yield step_event(SCAN, f"scanning {config.data_dir} ({count} images)", count, count)
    cache = yield from _cached_crops(config, annotated.paths)
    annotated = annotated.without(cache.errors_by_path)
    try:
        check_classes(annotated)
    except AnnotationError as error:
        raise TrainingError(f"{error} (after leaving out the images without a cell)") from error
    yield step_event(CACHE, f"caching crops: {len(annotated.paths)} cells, splitting by subject")
    try:
        split = split_train_val(annotated.items, config.val_fraction, config.seed)
    except ValueError as error:
        raise TrainingError(f"Cannot split {config.data_dir} for validation: {error}") from error
    summary, text = _data_summary(annotated, cache, split)
    if config.is_main_process:
        write_json_atomic(paths.summary_json, summary)
        write_text_atomic(paths.summary_text, text + "\n")
    yield numbered(CACHE)(Progress(1, 1, "preprocess", "data ready", {"text": text}))
    return PreparedData(
        cache=cache,
        rows=cache.rows(annotated.paths),
        labels=annotated.labels,
        subjects=annotated.subjects,
        files=[str(p) for p in annotated.paths],
        train=np.asarray(split.train, dtype=np.int64),
        val=np.asarray(split.val, dtype=np.int64),
        split_note=split.note,
    )


def _cached_crops(config: TrainConfig, files: list[Path]) -> Generator[Progress, None, CropCache]:
    """The crop cache of `files`, its progress retold as the run's steps: reading the files and
    segmenting them (step 2), writing the crops (step 3)."""
    params = segmentation_params(config)
    cache_dir = config.cache_dir if config.cache_dir is not None else default_cache_dir()
    workers = config.workers if config.workers is not None else default_workers()
    return (yield from retold(build_crop_cache(files, params, cache_dir, workers), _cache_step))


def _cache_step(event: Progress) -> Progress:
    """A crop-cache event as a step of the run: "reading files 40/400", "segmenting 120/400
    (80 reused)" (step 2), "caching crops: writing 400 crops" (step 3)."""
    if event.stage.endswith("caching"):
        return step_event(CACHE, f"caching crops: {event.message}", event.done, event.total)
    words = "reading files" if event.stage.endswith("hashing") else "segmenting"
    text = f"{words} {event.done}/{event.total}"
    if words == "segmenting" and event.message:
        text += f" ({event.message})"
    return step_event(SEGMENT, text, event.done, event.total)


def _data_summary(annotated, cache: CropCache, split) -> tuple[dict[str, Any], str]:
    """`summary.json`'s content and `summary.txt`'s text: classes, subjects, cache, split."""
    labels = annotated.labels
    summary = annotated.summary()
    summary["crop_cache"] = {
        "folder": str(cache.folder),
        "crop_size": cache.crop_size,
        "reused": cache.reused,
        "notes": {str(p): n for p, n in cache.notes_by_path.items()},
    }
    summary["split"] = {
        "note": split.note,
        "by_subject": split.by_subject,
        "train": class_counts(labels[split.train]),
        "val": class_counts(labels[split.val]),
        "train_subjects": list(split.train_subjects),
        "val_subjects": list(split.val_subjects),
    }
    text = (
        annotated.summary_text()
        + f"\n  {split.note}\n  "
        + (f"training: {summary['split']['train']}, validation: {summary['split']['val']}")
    )
    return summary, text


def data_to_json(data: PreparedData) -> dict[str, Any]:
    """What the other ranks need of the preprocessed data (rank 0 sends it)."""
    cache = data.cache
    return {
        "cache": {
            "folder": str(cache.folder),
            "paths": [str(p) for p in cache.paths],
            "keys": list(cache.keys),
            "ok": cache.ok.tolist(),
            "errors": list(cache.errors),
            "notes": list(cache.notes),
            "crop_size": cache.crop_size,
            "params": cache.params,
            "reused": cache.reused,
        },
        "rows": data.rows.tolist(),
        "labels": np.asarray(data.labels).tolist(),
        "subjects": list(data.subjects),
        "files": list(data.files),
        "train": data.train.tolist(),
        "val": data.val.tolist(),
        "split_note": data.split_note,
    }


def data_from_json(shared: dict[str, Any]) -> PreparedData:
    """Rank 0's preprocessed data on another rank: the same crop cache, opened from disk."""
    found = shared["cache"]
    cache = CropCache(
        folder=Path(found["folder"]),
        paths=[Path(p) for p in found["paths"]],
        keys=list(found["keys"]),
        ok=np.asarray(found["ok"], dtype=bool).reshape(len(found["paths"])),
        errors=list(found["errors"]),
        notes=list(found["notes"]),
        crop_size=int(found["crop_size"]),
        params=dict(found["params"]),
        reused=int(found["reused"]),
    )
    if cache.paths and not (cache.folder / CROPS_FILE).is_file():
        raise TrainingError(
            f"The crop cache that rank 0 built, {cache.folder}, cannot be seen from this machine. "
            "With several machines, give --cache-dir a folder on a filesystem they all share."
        )
    return PreparedData(
        cache=cache,
        rows=np.asarray(shared["rows"], dtype=np.int64),
        labels=np.asarray(shared["labels"], dtype=np.int64),
        subjects=list(shared["subjects"]),
        files=list(shared["files"]),
        train=np.asarray(shared["train"], dtype=np.int64),
        val=np.asarray(shared["val"], dtype=np.int64),
        split_note=shared["split_note"],
    )


def class_counts(labels: np.ndarray) -> dict[str, int]:
    return {"all": int((labels == 1).sum()), "hem": int((labels == 0).sum())}


def bagging_sets(config: TrainConfig, data: PreparedData):
    try:
        return make_bagging_subsets(data.labels[data.train], config.seed)
    except ValueError as error:
        raise TrainingError(f"Too few training cells in {config.data_dir}: {error}") from error
