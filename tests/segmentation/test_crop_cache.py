"""The crop cache: right crops, reused by content and parameters, safe against partial writes."""

from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from napari_allbag.data.synthetic import make_cell, make_field, write_annotated_folder
from napari_allbag.io.images import find_images
from napari_allbag.progress import Progress, drive
from napari_allbag.segmentation import crop_cache as crop_cache_module
from napari_allbag.segmentation.crop_cache import (
    CROPS_FILE,
    INDEX_FILE,
    build_crop_cache,
    default_cache_dir,
)
from napari_allbag.segmentation.dark import FileSegmentation, SegmentationParams, segment_file

PARAMS = SegmentationParams(crop_size=48)


@pytest.fixture()
def folder(tmp_path) -> list[Path]:
    return write_annotated_folder(
        tmp_path / "data", n_all=4, n_hem=3, n_subjects=2, seed=3, size=96
    )


@pytest.fixture()
def counting(monkeypatch):
    """Record which files the cache sends to segmentation."""
    segmented: list[Path] = []
    real = crop_cache_module.iter_segment_files

    def spy(paths, *args, **kwargs):
        paths = list(paths)
        segmented.extend(paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(crop_cache_module, "iter_segment_files", spy)
    return segmented


def _build(paths, cache_dir, params=PARAMS, workers=1):
    events: list[Progress] = []
    cache = drive(build_crop_cache(paths, params, cache_dir, workers), events.append)
    return cache, events


def test_crops_are_the_segmentation_crops(folder, tmp_path):
    cache, events = _build(folder, tmp_path / "cache")
    assert cache.crops.shape == (len(folder), 48, 48, 3) and cache.crops.dtype == np.uint8
    assert cache.ok.all() and not cache.errors_by_path
    assert not cache.crops.flags.writeable
    for i, path in enumerate(folder):
        expected = segment_file(path, PARAMS)
        largest = int(np.argmax(expected.table["area"]))
        assert np.array_equal(cache.crops[i], expected.crops[largest])
    assert events[-1].done == events[-1].total == len(folder)
    stages = ("preprocessing: hashing", "preprocessing: segmenting", "preprocessing: caching")
    assert list(dict.fromkeys(e.stage for e in events)) == list(stages)
    assert cache.rows([folder[2], folder[0]]).tolist() == [2, 0]


def test_rerun_reuses_and_changed_file_is_recomputed(folder, tmp_path, counting):
    cache_dir = tmp_path / "cache"
    first, _ = _build(folder, cache_dir)
    assert counting == folder
    counting.clear()

    again, _ = _build(folder, cache_dir)
    assert counting == [] and again.reused == len(folder) and again.folder == first.folder
    assert np.array_equal(again.crops, first.crops)

    # One file changes: only it is segmented again, the others come from the first set.
    changed = folder[1]
    cv2.imwrite(str(changed), cv2.cvtColor(make_cell("hem", 99, size=96), cv2.COLOR_RGB2BGR))
    third, _ = _build(folder, cache_dir)
    assert counting == [changed] and third.reused == len(folder) - 1
    assert third.folder != first.folder
    assert not np.array_equal(third.crops[1], first.crops[1])
    assert np.array_equal(np.delete(third.crops, 1, 0), np.delete(first.crops, 1, 0))
    counting.clear()

    # Other parameters: everything again.
    other, _ = _build(folder, cache_dir, SegmentationParams(crop_size=48, erosion_size=5))
    assert counting == folder and other.reused == 0


def test_files_without_a_crop_and_notes(tmp_path, counting):
    data = tmp_path / "data"
    data.mkdir()
    good = data / "good.png"
    cv2.imwrite(str(good), make_cell("all", 1, size=96))
    black = data / "black.png"
    cv2.imwrite(str(black), np.zeros((64, 64, 3), np.uint8))
    broken = data / "broken.bmp"
    broken.write_bytes(b"BM not really a bitmap")
    field_image, _ = make_field(seed=4, n_cells=2, shape=(256, 256))
    two = data / "two.png"
    cv2.imwrite(str(two), cv2.cvtColor(field_image, cv2.COLOR_RGB2BGR))
    paths = [good, black, broken, two]

    cache, _ = _build(paths, tmp_path / "cache")
    assert cache.ok.tolist() == [True, False, False, True]
    assert "no cell found" in cache.errors_by_path[black]
    assert broken in cache.errors_by_path
    assert cache.notes_by_path[two].startswith("2 cells found; kept the largest")
    assert cache.crops[1].max() == 0
    text = cache.summary_text()
    assert "2 of 4 images cropped" in text and "black.png" in text
    # Failures are cached too: a rerun segments nothing.
    counting.clear()
    again, _ = _build(paths, tmp_path / "cache")
    assert counting == [] and again.errors == cache.errors


def test_pickles_without_the_memory_map_and_works_in_worker_processes(folder, tmp_path):
    cache, _ = _build(folder, tmp_path / "cache")
    _ = cache.crops  # opened here
    blob = pickle.dumps(cache)
    assert len(blob) < 10_000
    clone = pickle.loads(blob)
    assert np.array_equal(clone.crops, cache.crops)

    class Crops(torch.utils.data.Dataset):
        def __len__(self):
            return len(cache)

        def __getitem__(self, i):
            return torch.from_numpy(np.array(cache.crops[i]))

    loader = torch.utils.data.DataLoader(Crops(), batch_size=3, num_workers=2)
    stacked = torch.cat(list(loader)).numpy()
    assert np.array_equal(stacked, cache.crops)


def test_cancel_leaves_no_set_and_partial_sets_are_not_used(folder, tmp_path, counting):
    cache_dir = tmp_path / "cache"
    work = build_crop_cache(folder, PARAMS, cache_dir, 1)
    for event in work:
        if event.stage == "preprocessing: segmenting" and event.done >= 2:
            break
    work.close()  # what napari's worker.quit() amounts to
    assert list(cache_dir.iterdir()) == []

    # A set folder with crops but no index (a crash before it was finished) is rebuilt.
    cache, _ = _build(folder, cache_dir)
    (cache.folder / INDEX_FILE).unlink()
    counting.clear()
    rebuilt, _ = _build(folder, cache_dir)
    assert counting == folder and rebuilt.folder == cache.folder
    assert json.loads((cache.folder / INDEX_FILE).read_text())["complete"] is True

    # A truncated crops file with a complete-looking index is not trusted either.
    np.save(cache.folder / CROPS_FILE, np.zeros((1, 48, 48, 3), np.uint8))
    counting.clear()
    _build(folder, cache_dir)
    assert counting == folder


def test_dead_temporaries_are_removed(folder, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    dead = cache_dir / f".tmp-{socket.gethostname()}-{2**22 + 12345}-deadbeef"
    dead.mkdir()
    (dead / CROPS_FILE).write_bytes(b"partial")
    alive = cache_dir / f".tmp-{socket.gethostname()}-{os.getpid()}-cafe"
    alive.mkdir()
    _build(folder[:2], cache_dir)
    assert not dead.exists() and alive.exists()


def test_real_sample_in_worker_processes(cnmc_dir, tmp_path):
    paths = find_images([cnmc_dir])[:12]
    cache, _ = _build(paths, tmp_path / "cache", SegmentationParams(crop_size=64), workers=2)
    assert cache.ok.all() and cache.crops.shape == (12, 64, 64, 3)
    # The crop is the cell on black: the corners are black, the centre is stained.
    assert cache.crops[:, :3, :3].max() == 0
    assert cache.crops[:, 28:36, 28:36].mean() > 20


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_ALLBAG_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("NAPARI_ALLBAG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "napari-allbag"


def test_worker_deaths_are_retried_by_the_next_run(folder, tmp_path, monkeypatch, counting):
    real = crop_cache_module.iter_segment_files  # the spy from `counting`

    def dying_on_first(paths, *args, **kwargs):
        for outcome in real(paths, *args, **kwargs):
            if outcome.path == folder[0]:
                outcome = FileSegmentation(outcome.path, None, "the worker process died (oom?)")
            yield outcome

    monkeypatch.setattr(crop_cache_module, "iter_segment_files", dying_on_first)
    first, _ = _build(folder, tmp_path / "cache")
    assert first.ok.tolist() == [False] + [True] * (len(folder) - 1)
    monkeypatch.setattr(crop_cache_module, "iter_segment_files", real)
    counting.clear()
    second, _ = _build(folder, tmp_path / "cache")
    assert counting == [folder[0]] and second.ok.all() and second.folder == first.folder
    counting.clear()
    _build(folder, tmp_path / "cache")
    assert counting == []
