"""The 7:3 split: by subject, stratified by class, seeded; by cell without subject ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_allbag.data.annotations import AnnotatedItem, scan_annotated_folder
from napari_allbag.data.splits import split_train_val


def _items(subject_sizes: dict[str, tuple[str, int]], with_subjects: bool = True):
    items = []
    for subject, (label, n) in subject_sizes.items():
        for k in range(n):
            items.append(
                AnnotatedItem(Path(f"{subject}_{k}.bmp"), label, subject if with_subjects else None)
            )
    return items


def _c_nmc_like(seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = {str(i): ("all", int(rng.integers(5, 60))) for i in range(1, 31)}
    sizes |= {f"H{i}": ("hem", int(rng.integers(5, 40))) for i in range(1, 16)}
    return _items(sizes)


def _check_partition(items, split):
    assert sorted(split.train + split.val) == list(range(len(items)))
    assert not set(split.train) & set(split.val)
    for side in (split.train, split.val):
        assert {items[i].label for i in side} == {"all", "hem"}


def test_split_by_subject_keeps_subjects_together_and_is_close_to_7_3():
    items = _c_nmc_like()
    split = split_train_val(items, 0.3, seed=0)
    assert split.by_subject
    _check_partition(items, split)
    train_subjects = {items[i].subject for i in split.train}
    val_subjects = {items[i].subject for i in split.val}
    assert not train_subjects & val_subjects
    assert set(split.val_subjects) == val_subjects and set(split.train_subjects) == train_subjects
    # Per class and overall, the validation share is close to 0.3.
    for label in ("all", "hem"):
        n = sum(item.label == label for item in items)
        n_val = sum(items[i].label == label for i in split.val)
        assert abs(n_val / n - 0.3) < 0.02, label
    assert "by subject" in split.note


def test_split_is_seeded():
    items = _c_nmc_like()
    assert split_train_val(items, seed=3) == split_train_val(items, seed=3)
    assert split_train_val(items, seed=3).val != split_train_val(items, seed=4).val


def test_split_real_sample_by_subject(cnmc_dir):
    annotated = scan_annotated_folder(cnmc_dir)
    split = split_train_val(annotated.items, 0.3, seed=0)
    assert split.by_subject
    _check_partition(annotated.items, split)
    assert not {annotated.items[i].subject for i in split.train} & {
        annotated.items[i].subject for i in split.val
    }
    assert abs(len(split.val) / len(annotated) - 0.3) < 0.05


def test_without_subjects_splits_by_cell_and_says_so():
    items = _items({"a": ("all", 40), "h": ("hem", 20)}, with_subjects=False)
    split = split_train_val(items, 0.3, seed=1)
    assert not split.by_subject
    _check_partition(items, split)
    assert sum(items[i].label == "all" for i in split.val) == 12
    assert sum(items[i].label == "hem" for i in split.val) == 6
    assert "by cell" in split.note and "no subject ids" in split.note


def test_some_cells_without_subject_split_by_cell():
    items = _items({"1": ("all", 5), "2": ("all", 5), "H1": ("hem", 4), "H2": ("hem", 4)})
    items[0] = AnnotatedItem(items[0].path, "all", None)
    split = split_train_val(items, seed=0)
    assert not split.by_subject and "1 of 18 cells have no subject id" in split.note


def test_too_few_subjects_or_cells():
    items = _items({"1": ("all", 5), "2": ("all", 5), "H1": ("hem", 8)})
    with pytest.raises(ValueError, match="Too few HEM subjects.*found 1, need at least 2"):
        split_train_val(items)
    items = _items({"a": ("all", 5), "h": ("hem", 1)}, with_subjects=False)
    with pytest.raises(ValueError, match="Too few HEM cells.*found 1, need at least 2"):
        split_train_val(items)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(items, val_fraction=1.0)
    with pytest.raises(ValueError, match="no annotated cells"):
        split_train_val([])


def test_two_subjects_per_class_is_enough():
    items = _items({"1": ("all", 3), "2": ("all", 9), "H1": ("hem", 2), "H2": ("hem", 2)})
    split = split_train_val(items, seed=0)
    _check_partition(items, split)
    # The 3-cell ALL subject comes closest to 30 % of 12 ALL cells; one of the two HEM subjects.
    assert [s for s in split.val_subjects if not s.startswith("H")] == ["1"]
    assert len([s for s in split.val_subjects if s.startswith("H")]) == 1
