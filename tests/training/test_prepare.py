"""training.prepare: a run's data from an annotated folder, and its hand-over to other ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_allbag.progress import drive
from napari_allbag.training.config import RunPaths, TrainConfig, TrainingError
from napari_allbag.training.prepare import (
    bagging_sets,
    class_counts,
    data_from_json,
    data_to_json,
    preprocess_cells,
    segmentation_params,
)
from tests.training.crop_set import CROP, N_ALL, N_HEM, make_crop_set


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    crop_set = make_crop_set(root)
    config = TrainConfig(
        data_dir=crop_set.data_dir,
        out_dir=root / "run",
        crop_size=CROP,
        cache_dir=crop_set.cache_dir,
        workers=1,
        seed=2,
        val_fraction=0.5,
    )
    paths = RunPaths(config.out_dir)
    paths.root.mkdir()
    events = []
    data = drive(preprocess_cells(config, paths), events.append)
    return config, paths, crop_set, data, events


def test_the_cells_are_split_by_subject_and_summarised(prepared):
    config, paths, crop_set, data, events = prepared
    assert data.files == [str(p) for p in crop_set.paths]
    assert data.labels.tolist() == [1] * N_ALL + [0] * N_HEM  # all/ sorts before hem/
    assert np.array_equal(data.cache.crops[data.rows], crop_set.cache.crops[crop_set.cache.ok])
    assert sorted([*data.train, *data.val]) == list(range(N_ALL + N_HEM))
    train_subjects = {data.subjects[i] for i in data.train}
    assert train_subjects and not train_subjects & {data.subjects[i] for i in data.val}
    summary = json.loads(paths.summary_json.read_text())
    assert summary["split"]["note"] == data.split_note and summary["split"]["by_subject"]
    assert summary["split"]["train"] == class_counts(data.labels[data.train])
    assert summary["crop_cache"]["reused"] == len(crop_set.paths)  # built once, found again
    assert data.split_note in paths.summary_text.read_text()
    assert events[0].stage == "preprocess" and events[-1].message == "data ready"


def test_other_ranks_get_the_same_data(prepared):
    _, _, _, data, _ = prepared
    again = data_from_json(json.loads(json.dumps(data_to_json(data))))
    for name in ("rows", "labels", "train", "val"):
        assert np.array_equal(getattr(again, name), getattr(data, name)), name
    assert again.files == data.files and again.subjects == data.subjects
    assert np.array_equal(again.cache.crops, data.cache.crops)
    moved = data_to_json(data)
    moved["cache"]["folder"] = str(data.cache.folder.parent / "elsewhere")
    with pytest.raises(TrainingError, match="cannot be seen from this machine"):
        data_from_json(moved)


def test_bagging_sets_and_segmentation_settings(prepared, tmp_path):
    config, _, _, data, _ = prepared
    subset_a, subset_b = bagging_sets(config, data)
    assert max(subset_a.indices) < len(data.train) and max(subset_b.indices) < len(data.train)
    params = segmentation_params(config)
    assert params.crop_size == CROP and params.largest_only is True
    bad = TrainConfig(data_dir=tmp_path, out_dir=tmp_path, segmentation={"min_area": -5})
    with pytest.raises(TrainingError, match="Invalid segmentation settings"):
        segmentation_params(bad)
    assert class_counts(np.array([1, 0, 1])) == {"all": 2, "hem": 1}
