"""Annotated folders: classes from folders or suffixes, subjects from names or a CSV, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.data.annotations import (
    AnnotationError,
    class_indices,
    scan_annotated_folder,
    subject_from_name,
)
from napari_allbag.data.synthetic import write_annotated_folder


def _write(path: Path, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((16, 16, 3), np.uint8)
    image[4:12, 4:12] = value
    assert cv2.imwrite(str(path), image)
    return path


def test_real_cnmc_sample(cnmc_dir):
    annotated = scan_annotated_folder(cnmc_dir)
    summary = annotated.summary()
    assert summary["per_class"] == {"hem": 31, "all": 31}
    assert annotated.has_subjects and summary["subjects_source"] == "file names"
    # The challenge spells subject H3 as h3: one subject, upper-cased.
    assert "H3" in summary["per_subject"] and "h3" not in summary["per_subject"]
    assert summary["per_subject"]["H3"]["hem"] == 4
    # Each subject holds one class only, and every id is digits or H + digits.
    for subject, counts in summary["per_subject"].items():
        assert (counts["all"] == 0) != (counts["hem"] == 0), subject
        assert subject.isdigit() == (counts["all"] > 0)
    assert list(annotated.labels).count(1) == 31
    json.dumps(summary)


def test_subject_from_name():
    assert subject_from_name("UID_H10_47_2_hem.bmp") == "H10"
    assert subject_from_name("UID_h3_1_1_hem.bmp") == "H3"
    assert subject_from_name("UID_011_1_1_all.BMP") == "11"
    assert subject_from_name("cell_12_all.png") is None


def test_generated_folder_gives_subjects(tmp_path):
    paths = write_annotated_folder(tmp_path, n_all=6, n_hem=4, n_subjects=2, seed=1, size=32)
    annotated = scan_annotated_folder(tmp_path)
    assert sorted(annotated.paths) == sorted(paths)
    assert sorted(set(annotated.subjects)) == ["1", "2", "H1", "H2"]
    assert annotated.summary()["per_class"] == {"hem": 4, "all": 6}


def test_folders_at_any_depth_suffixes_and_leftovers(tmp_path):
    _write(tmp_path / "fold_0" / "ALL" / "a1.BMP")
    _write(tmp_path / "fold_0" / "Hem" / "deeper" / "h1.png")
    _write(tmp_path / "fold_1" / "mixed" / "x_7_all.tif")
    _write(tmp_path / "fold_1" / "mixed" / "x_8_HEM.jpg")
    _write(tmp_path / "fold_1" / "mixed" / "no_class.png")
    _write(tmp_path / "hem" / "named_wrong_all.png")  # folder wins, listed as conflicting
    (tmp_path / "all" / "empty.bmp").parent.mkdir(parents=True)
    (tmp_path / "all" / "empty.bmp").write_bytes(b"")
    (tmp_path / "all" / "notes.txt").write_text("not an image")

    annotated = scan_annotated_folder(tmp_path)
    labels = {item.path.relative_to(tmp_path).as_posix(): item.label for item in annotated.items}
    assert labels == {
        "fold_0/ALL/a1.BMP": "all",
        "fold_0/Hem/deeper/h1.png": "hem",
        "fold_1/mixed/x_7_all.tif": "all",
        "fold_1/mixed/x_8_HEM.jpg": "hem",
        "hem/named_wrong_all.png": "hem",
    }
    assert annotated.unlabelled == [tmp_path / "fold_1" / "mixed" / "no_class.png"]
    assert [p for p, _ in annotated.unreadable] == [tmp_path / "all" / "empty.bmp"]
    assert annotated.conflicting == [tmp_path / "hem" / "named_wrong_all.png"]
    assert not annotated.has_subjects and annotated.subjects_source == "none"
    text = annotated.summary_text()
    assert "no_class.png" in text and "empty.bmp" in text and "subjects: unknown" in text


def test_subjects_from_csv(tmp_path):
    _write(tmp_path / "all" / "a1.png")
    _write(tmp_path / "all" / "a2.png")
    _write(tmp_path / "hem" / "h1.png")
    _write(tmp_path / "hem" / "UID_H9_1_1_hem.png")
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("File,Subject\nall/a1.png,P1\na2.png,P2\nhem/h1.png,N1\nmissing.png,P9\n")
    annotated = scan_annotated_folder(tmp_path, subjects_csv=csv_path)
    subjects = {item.path.name: item.subject for item in annotated.items}
    assert subjects == {"a1.png": "P1", "a2.png": "P2", "h1.png": "N1", "UID_H9_1_1_hem.png": "H9"}
    assert annotated.subjects_source == "csv + file names"
    assert annotated.csv_rows_unmatched == ["missing.png"]


def test_csv_without_columns_is_a_clear_error(tmp_path):
    _write(tmp_path / "all" / "a1.png")
    _write(tmp_path / "hem" / "h1.png")
    bad = tmp_path / "s.csv"
    bad.write_text("name,patient\na1.png,P1\n")
    with pytest.raises(AnnotationError, match=r"'file' and 'subject'.*name, patient"):
        scan_annotated_folder(tmp_path, subjects_csv=bad)


def test_no_images_names_the_folder(tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "readme.txt").write_text("x")
    with pytest.raises(AnnotationError, match=f"No images found in {tmp_path}"):
        scan_annotated_folder(tmp_path)
    with pytest.raises(AnnotationError, match="not found"):
        scan_annotated_folder(tmp_path / "nope")


def test_one_class_missing(tmp_path):
    _write(tmp_path / "all" / "a1.png")
    _write(tmp_path / "all" / "a2.png")
    with pytest.raises(AnnotationError, match=r"Only ALL cells.*no HEM cells.*hem/"):
        scan_annotated_folder(tmp_path)
    assert len(scan_annotated_folder(tmp_path, require_both_classes=False)) == 2


def test_no_class_anywhere(tmp_path):
    _write(tmp_path / "cells" / "c1.png")
    with pytest.raises(AnnotationError, match="has a class"):
        scan_annotated_folder(tmp_path)


def test_without_moves_failed_files_to_unreadable(tmp_path):
    write_annotated_folder(tmp_path, n_all=3, n_hem=2, n_subjects=1, seed=0, size=32)
    annotated = scan_annotated_folder(tmp_path)
    failed = annotated.paths[0]
    reduced = annotated.without({failed: "no cell found"})
    assert len(reduced) == len(annotated) - 1 and failed not in reduced.paths
    assert reduced.unreadable == [(failed, "no cell found")]
    assert reduced.summary()["unreadable"] == [{"file": str(failed), "reason": "no cell found"}]


def test_class_indices_from_names_or_indices():
    assert class_indices(["HEM", "all", "Hem"]).tolist() == [0, 1, 0]
    assert class_indices(np.array([1, 0, 1], dtype=np.uint8)).tolist() == [1, 0, 1]
    assert class_indices([]).dtype == np.int64
    with pytest.raises(ValueError, match="Unknown class 'blast'"):
        class_indices(["all", "blast"])
    with pytest.raises(ValueError, match=r"must be in 0\.\.1"):
        class_indices([0, 2])
    with pytest.raises(ValueError, match=r"must be in 0\.\.1"):
        class_indices([-1])
