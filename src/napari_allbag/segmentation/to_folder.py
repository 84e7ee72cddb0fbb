"""Segment image files into a folder: one PNG crop per cell, cells.csv and errors.csv.

What `napari-allbag segment` runs: workers segment each file and write its crops as
``crops/<image stem>_cell<k>.png`` (stems that collide between inputs are told apart by
`unique_stems`); this process writes ``cells.csv`` (one row per cell) and ``errors.csv`` (files
that could not be read, and why) row by row, moved into place at the end. Each image gets the
background mode `params.background` asks for (auto: the one it needs); TIFFs above
`Tiling.above_megapixels` are segmented in overlapping tiles (`tiles.segment_large`), after the
others. What the console should say per image travels back as an `ImageFeedback`.

May import: `io`, `data`, `progress`, `defaults` and its own subpackage.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_allbag.io.atomic import AtomicCsv, write_bytes_atomic
from napari_allbag.io.images import ImageReadError
from napari_allbag.io.ordered_pool import ordered_map
from napari_allbag.io.png import encode_png
from napari_allbag.progress import Progress
from napari_allbag.segmentation.dark import (
    FILES_PER_TASK,
    TABLE_COLUMNS,
    WORKER_PRELOAD,
    SegmentationParams,
    default_workers,
    try_segment_file,
)
from napari_allbag.segmentation.feedback import FeedbackTally, ImageFeedback

CELLS_COLUMNS = ("source", "cell_id", "crop") + tuple(
    name for name in TABLE_COLUMNS if name not in ("source", "cell_id")
)
ERRORS_COLUMNS = ("file", "reason")


@dataclass(frozen=True)
class Tiling:
    """When a TIFF is segmented in tiles (above this many megapixels) and how large they are."""

    above_megapixels: float = 36.0
    tile: int = 2048


def segment_to_folder(
    paths: list[Path],
    out_dir: Path,
    params: SegmentationParams,
    workers: int | None,
    tiling: Tiling | None = None,
    warn: Callable[[str], None] | None = None,
) -> Generator[Progress, None, dict]:
    """Segment `paths` into `out_dir` (crops/, cells.csv, errors.csv); return counts and the
    `FeedbackTally` (key "feedback").

    Workers segment and write their crops (PNG encoding is the slow part); this process writes
    the tables row by row into temporary files that are moved into place at the end, also when
    interrupted (Ctrl-C): they then list every file finished until then (the crops of the few
    files that were in flight may be on disk without rows). Large TIFFs (see `Tiling`) come
    after the others, each in tiles spread over the workers. `warn` gets one line per image
    whose segmentation needs a word (mode guessed, no cell, doubtful cells).
    """
    crops_dir = out_dir / "crops"
    crops_dir.mkdir(parents=True, exist_ok=True)
    stems = unique_stems(paths)
    workers = default_workers() if workers is None else workers
    tiling = tiling or Tiling()
    large = [path for path in paths if _is_large(path, tiling)]
    small = [path for path in paths if path not in set(large)]
    counts = {"segmented": 0, "failed": 0, "empty": 0, "cells": 0, "feedback": FeedbackTally()}
    outcomes = ordered_map(
        segment_and_save,
        ((path, stems[path]) for path in small),
        (params, crops_dir),
        workers,
        on_worker_death=lambda item, why: SavedCells(item[0], None, [], why),
        chunk_size=FILES_PER_TASK,
        preload=WORKER_PRELOAD,
    )
    with (
        AtomicCsv(out_dir / "cells.csv", CELLS_COLUMNS, on_error="commit") as cells_csv,
        AtomicCsv(out_dir / "errors.csv", ERRORS_COLUMNS, on_error="commit") as errors_csv,
        closing(outcomes),
    ):  # stops the worker pool at once, also on Ctrl-C
        starting = "starting" if workers == 1 else f"starting {workers} workers"
        yield Progress(0, len(paths), "segmenting", starting)
        tables = (cells_csv, errors_csv)
        for done, saved in enumerate(outcomes, start=1):
            _record(saved, counts, tables, warn)
            yield _files_progress(done, len(paths), counts)
        for done, path in enumerate(large, start=len(small) + 1):
            job = (path, stems[path], params, crops_dir)
            saved = yield from _segment_large_file(job, tiling, workers)
            _record(saved, counts, tables, warn)
            yield _files_progress(done, len(paths), counts)
    return counts


def _files_progress(done: int, total: int, counts: dict) -> Progress:
    metrics = {"cells": counts["cells"], "errors": counts["failed"]}
    return Progress(done, total, "segmenting", metrics=metrics)


def _record(saved: SavedCells, counts: dict, tables: tuple, warn) -> None:
    """Count one file's outcome, write its rows, and say what looks wrong with it."""
    cells_csv, errors_csv = tables
    if saved.error is not None:
        counts["failed"] += 1
        errors_csv.write_row([str(saved.path), saved.error])
        return
    counts["segmented"] += 1
    counts["empty"] += not saved.crop_names
    counts["cells"] += len(saved.crop_names)
    for row, name in enumerate(saved.crop_names):
        cells_csv.write_row(_cells_row(saved.table, row, saved.path, name))
    if saved.feedback is not None:
        counts["feedback"].add(saved.feedback)
        line = saved.feedback.line(str(saved.path))
        if line and warn is not None:
            warn(line)


def _is_large(path: Path, tiling: Tiling) -> bool:
    from napari_allbag.segmentation.tiles import needs_tiling, tiff_shape

    shape = tiff_shape(path)
    return shape is not None and needs_tiling(shape, tiling.above_megapixels)


def _segment_large_file(
    job: tuple[Path, str, SegmentationParams, Path], tiling: Tiling, workers: int
) -> Generator[Progress, None, SavedCells]:
    """One large TIFF in tiles (`tiles.segment_large`), its crops written here."""
    from napari_allbag.segmentation.tiles import TileOptions, segment_large

    path, stem, params, crops_dir = job
    options = TileOptions(tile=tiling.tile, workers=workers, keep_labels=False)
    try:
        result = yield from segment_large(path, params, options, str(path))
    except ImageReadError as error:
        return SavedCells(path, None, [], error.reason)
    except MemoryError:
        return SavedCells(path, None, [], "out of memory while segmenting this image in tiles")
    names = [f"{stem}_cell{int(cell_id)}.png" for cell_id in result.table["cell_id"]]
    for name, crop in zip(names, result.crops, strict=True):
        _write_png(crops_dir / name, crop)
    return SavedCells(path, result.table, names, feedback=ImageFeedback.of(result))


@dataclass
class SavedCells:
    """One file's outcome: its table, the crop files written and what the console should say
    about it, or why it failed."""

    path: Path
    table: dict[str, np.ndarray] | None
    crop_names: list[str]
    error: str | None = None
    feedback: ImageFeedback | None = None


def segment_and_save(
    item: tuple[Path, str], params: SegmentationParams, crops_dir: Path
) -> SavedCells:
    """Segment one file and write its crops as ``<stem>_cell<k>.png`` (runs in workers)."""
    path, stem = item
    outcome = try_segment_file(path, params, keep_labels=False)
    if outcome.error is not None:
        return SavedCells(path, None, [], outcome.error)
    result = outcome.result
    names = [f"{stem}_cell{int(cell_id)}.png" for cell_id in result.table["cell_id"]]
    for name, crop in zip(names, result.crops, strict=True):
        _write_png(crops_dir / name, crop)
    return SavedCells(path, result.table, names, feedback=ImageFeedback.of(result))


def unique_stems(paths: Iterable[Path]) -> dict[Path, str]:
    """A crop-name prefix per path: its stem, told apart where stems collide.

    Collisions are found case-insensitively (crops must not overwrite each other on macOS or
    Windows either) and resolved by the path below the colliding files' common folder
    (``all/a.bmp``, ``hem/a.bmp`` -> ``all__a``, ``hem__a``), then by the extension, then by a
    counter.
    """
    paths = list(paths)
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        groups[path.stem.lower()].append(path)
    names: dict[Path, str] = {}
    for group in groups.values():
        if len(group) == 1:
            names[group[0]] = group[0].stem
            continue
        resolved = [p.resolve() for p in group]
        common = Path(os.path.commonpath([p.parent for p in resolved]))
        candidates = ["__".join(p.relative_to(common).with_suffix("").parts) for p in resolved]
        if _has_duplicates(candidates):
            candidates = [
                f"{c}_{p.suffix.lstrip('.')}" for c, p in zip(candidates, group, strict=True)
            ]
        if _has_duplicates(candidates):
            candidates = [f"{c}_{i}" for i, c in enumerate(candidates, start=1)]
        names.update(zip(group, candidates, strict=True))
    return names


def _has_duplicates(names: list[str]) -> bool:
    return len({name.lower() for name in names}) < len(names)


def _cells_row(table: dict[str, np.ndarray], row: int, path: Path, crop_name: str) -> list:
    values = {"source": str(path), "crop": f"crops/{crop_name}"}
    for name in CELLS_COLUMNS:
        if name in values:
            continue
        value = table[name][row]
        if isinstance(value, (np.floating, float)):
            values[name] = "" if value != value else f"{float(value):.6g}"  # NaN: not measured
        elif isinstance(value, (np.bool_, bool)):
            values[name] = str(bool(value))
        elif isinstance(value, str):
            values[name] = value
        else:
            values[name] = str(int(value))
    return [values[name] for name in CELLS_COLUMNS]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    write_bytes_atomic(path, encode_png(rgb), mode=None, sync=False)
