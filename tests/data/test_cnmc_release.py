"""The C-NMC release as it unpacks: the training folds, and the test set's numbered images + CSV."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.data.annotations import AnnotationError, read_labels_csv, scan_annotated_folder

# subject, image, cell, class: spread over three folds like the release
TRAINING = {
    "fold_0": [("11", 1, 1, "all"), ("11", 2, 1, "all"), ("H10", 1, 1, "hem")],
    "fold_1": [("23", 4, 2, "all"), ("H3", 7, 1, "hem"), ("H3", 8, 1, "hem")],
    "fold_2": [("47", 1, 1, "all"), ("H22", 3, 1, "hem")],
}


def _cell(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((24, 24, 3), np.uint8)
    image[6:18, 6:18] = (value, 40, 200 - value)
    assert cv2.imwrite(str(path), image)
    return path


def _training_release(root: Path) -> Path:
    """C-NMC_training_data/fold_N/{all,hem}/UID_..., plus what a zip unpack leaves beside it."""
    data = root / "C-NMC_training_data"
    for fold, cells in TRAINING.items():
        for n, (subject, image, cell, label) in enumerate(cells):
            _cell(data / fold / label / f"UID_{subject}_{image}_{cell}_{label}.bmp", 50 + 20 * n)
    junk = root / "__MACOSX" / "C-NMC_training_data" / "fold_0" / "all" / "._UID_11_1_1_all.bmp"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (data / "fold_0" / ".DS_Store").write_bytes(b"\x00")
    return data


def test_training_folds_as_they_unpack(tmp_path):
    data = _training_release(tmp_path)
    for root in (data, tmp_path):  # the folder itself, or the folder it was unpacked into
        annotated = scan_annotated_folder(root)
        summary = annotated.summary()
        assert summary["per_class"] == {"hem": 4, "all": 4}
        assert summary["subjects_source"] == "file names" and annotated.has_subjects
        assert set(summary["per_subject"]) == {"11", "23", "47", "H10", "H3", "H22"}
        assert summary["unlabelled"] == [] and summary["unreadable"] == []
        assert {p.parts[-3] for p in annotated.paths} == set(TRAINING)


def _prelim(root: Path, header: str, rows: list[tuple[str, str, str]]) -> tuple[Path, Path]:
    images = root / "C-NMC_test_prelim_phase_data"
    for n, (_, name, _) in enumerate(rows):
        _cell(images / name, 60 + 10 * n)
    csv_path = root / "C-NMC_test_prelim_phase_data_labels.csv"
    lines = [header] + [",".join(row) for row in rows]
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, images


PRELIM = [
    ("UID_57_29_1_all.bmp", "1.bmp", "1"),
    ("UID_H49_35_1_hem.bmp", "2.bmp", "0"),
    ("UID_57_30_2_all.bmp", "3.bmp", "1"),
    ("UID_h61_2_1_hem.bmp", "10.bmp", "0"),
]


def test_preliminary_test_set_as_it_comes(tmp_path):
    csv_path, images = _prelim(tmp_path, "Patient_ID,new_names,labels", PRELIM)
    items = read_labels_csv(csv_path, images)
    assert [(i.path.name, i.label, i.subject) for i in items] == [
        ("1.bmp", "all", "57"),
        ("2.bmp", "hem", "H49"),
        ("3.bmp", "all", "57"),
        ("10.bmp", "hem", "H61"),
    ]
    assert [i.label_index for i in items] == [1, 0, 1, 0]


def test_column_names_are_matched_loosely(tmp_path):
    rows = [("57", "1.bmp", "ALL"), ("H49", "2.bmp", "hem"), ("H49", "3.bmp", "0.0")]
    csv_path, images = _prelim(tmp_path, "Subject, File Name ,Label", rows)
    items = read_labels_csv(csv_path, images)
    assert [(i.label, i.subject) for i in items] == [("all", "57"), ("hem", "H49"), ("hem", "H49")]
    no_subjects = tmp_path / "two.csv"
    no_subjects.write_text("image,class\n1.bmp,1\n", encoding="utf-8")
    assert read_labels_csv(no_subjects, images)[0].subject is None


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("Patient,picture,y", PRELIM[:1], r"no file or label column \(found: Patient, picture, y"),
        ("Patient_ID,new_names,labels", [("UID_1_1_1_all.bmp", "1.bmp", "2")], "line 2: label '2'"),
        ("Patient_ID,new_names,labels", [PRELIM[0], PRELIM[0]], "listed twice"),
    ],
)
def test_csv_errors_say_what_is_wrong(tmp_path, header, rows, message):
    csv_path, images = _prelim(tmp_path, header, rows)
    with pytest.raises(AnnotationError, match=message):
        read_labels_csv(csv_path, images)


def test_images_missing_from_the_folder_are_named(tmp_path):
    csv_path, images = _prelim(tmp_path, "Patient_ID,new_names,labels", PRELIM)
    (images / "3.bmp").unlink()
    with pytest.raises(AnnotationError, match=r"1 image\(s\) named in .* are not in .*: 3.bmp"):
        read_labels_csv(csv_path, images)
    with pytest.raises(AnnotationError, match="not found"):
        read_labels_csv(tmp_path / "nope.csv", images)
