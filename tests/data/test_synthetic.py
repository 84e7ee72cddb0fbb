"""The synthetic C-NMC-like generator: determinism, realism, class differences, fields, folders."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.data import synthetic
from napari_allbag.data.synthetic import (
    CNMC_NAME,
    StainShift,
    make_cell,
    make_field,
    write_annotated_folder,
)

SHIPPED = Path(__file__).resolve().parents[2] / "sample_data"


def _mask(image: np.ndarray) -> np.ndarray:
    return image.max(axis=2) > 0


def _circularity(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    return 4 * np.pi * cv2.contourArea(contour) / cv2.arcLength(contour, True) ** 2


def _chromatin_contrast(image: np.ndarray) -> float:
    """Mid-scale grey-level variation inside the cell (clumped chromatin scores high)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    band = cv2.GaussianBlur(grey, (0, 0), 1.0) - cv2.GaussianBlur(grey, (0, 0), 6.0)
    inner = cv2.erode(_mask(image).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    return float(band[inner].std())


def test_same_seed_same_bytes_other_seed_other_cell():
    first = make_cell("all", 3, size=128)
    assert first.tobytes() == make_cell("all", 3, size=128).tobytes()
    assert not np.array_equal(first, make_cell("all", 4, size=128))
    assert not np.array_equal(first, make_cell("hem", 3, size=128))


def test_cell_looks_like_a_cnmc_image():
    image = make_cell("hem", 1)
    assert image.shape == (450, 450, 3) and image.dtype == np.uint8
    mask = _mask(image)
    # One cell on pure black, not touching the border, about the real cells' size.
    assert (
        not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    )
    count, _ = cv2.connectedComponents(mask.astype(np.uint8))
    assert count - 1 == 1
    assert 15_000 < mask.sum() < 60_000
    red, green, blue = image[mask].mean(axis=0)
    assert blue > red > green  # violet stain


def test_size_option_draws_the_same_cell_smaller():
    big = _mask(make_cell("all", 5, size=450))
    small = _mask(make_cell("all", 5, size=128))
    assert small.shape == (128, 128)
    shrunk = cv2.resize(big.astype(np.uint8), (128, 128), interpolation=cv2.INTER_AREA) > 0
    iou = (shrunk & small).sum() / (shrunk | small).sum()
    assert iou > 0.9


def test_classes_differ_as_the_literature_says():
    cells = {
        label: [
            make_cell(label, seed, size=225, subject_shift=StainShift.for_subject(seed % 4))
            for seed in range(20)
        ]
        for label in ("all", "hem")
    }
    area = {k: np.mean([_mask(c).sum() for c in v]) for k, v in cells.items()}
    roundness = {k: np.mean([_circularity(_mask(c)) for c in v]) for k, v in cells.items()}
    chromatin = {k: np.mean([_chromatin_contrast(c) for c in v]) for k, v in cells.items()}
    assert area["all"] > 1.2 * area["hem"]  # blasts are larger
    assert roundness["all"] > roundness["hem"]  # and rounder
    assert chromatin["hem"] > 1.5 * chromatin["all"]  # normal cells: coarser, clumped chromatin
    # Within-class variation: not every cell the same size.
    sizes = [_mask(c).sum() for c in cells["all"]]
    assert np.std(sizes) > 0.05 * np.mean(sizes)


def test_subject_stain_shifts_colour_not_shape():
    plain = make_cell("all", 9, size=128)
    shifted = make_cell("all", 9, size=128, subject_shift=(1.2, 0.9, 0.9))
    assert np.array_equal(_mask(plain), _mask(shifted))
    mask = _mask(plain)
    assert shifted[mask][:, 0].mean() > plain[mask][:, 0].mean() + 5
    assert StainShift.for_subject(1) == StainShift.for_subject(1)
    assert StainShift.for_subject(1) != StainShift.for_subject(2)


def test_bad_label_and_size_are_refused():
    with pytest.raises(ValueError, match="'all' or 'hem'"):
        make_cell("blast", 0)
    with pytest.raises(ValueError, match="size"):
        make_cell("all", 0, size=4)


def test_cells_match_the_real_sample(cnmc_dir):
    real = [cv2.imread(str(p))[:, :, ::-1] for p in sorted(cnmc_dir.glob("*/*.bmp"))]
    fake = [
        make_cell(label, seed, subject_shift=StainShift.for_subject(seed))
        for label in ("all", "hem")
        for seed in range(10)
    ]
    for images in (real, fake):
        assert all(image.shape == (450, 450, 3) for image in images)
    real_colour = np.mean([im[_mask(im)].mean(axis=0) for im in real], axis=0)
    fake_colour = np.mean([im[_mask(im)].mean(axis=0) for im in fake], axis=0)
    assert np.abs(real_colour - fake_colour).max() < 15
    real_area = np.mean([_mask(im).sum() for im in real])
    fake_area = np.mean([_mask(im).sum() for im in fake])
    assert 0.7 < fake_area / real_area < 1.3


def test_field_truth_matches_separated_cells():
    image, truth = make_field(seed=4, n_cells=6, shape=(512, 640), n_debris=5)
    assert image.shape == (512, 640, 3) and image.dtype == np.uint8
    assert len(truth) == 6 and {cell.label for cell in truth} == {"all", "hem"}
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    assert np.percentile(grey, 50) < 10  # dark background
    count, labels, stats, _ = cv2.connectedComponentsWithStats((grey > 12).astype(np.uint8))
    big = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] > 200]
    assert len(big) == 6  # every cell its own component: none touch, debris is small
    found = sorted(labels[round(c.center[0]), round(c.center[1])] for c in truth)
    assert found == sorted(big)
    for cell in truth:
        r0, c0, r1, c1 = cell.bbox
        assert 0 < r0 < r1 < 512 and 0 < c0 < c1 < 640
        assert abs((labels[r0:r1, c0:c1] > 0).sum() - cell.area) < 0.05 * cell.area
    again, truth_again = make_field(seed=4, n_cells=6, shape=(512, 640), n_debris=5)
    assert np.array_equal(image, again) and truth == truth_again


def test_field_too_crowded_is_refused():
    with pytest.raises(ValueError, match="fewer cells"):
        make_field(seed=0, n_cells=40, shape=(256, 256), cell_size=128)


def _written(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_annotated_folder_names_layout_and_determinism(tmp_path):
    paths = write_annotated_folder(tmp_path / "a", n_all=7, n_hem=5, n_subjects=3, seed=1, size=64)
    assert len(paths) == 12 and len(set(paths)) == 12
    subjects = {"all": set(), "hem": set()}
    for path in paths:
        match = CNMC_NAME.match(path.name)
        assert match, path.name
        assert path.parent == tmp_path / "a" / match["label"]
        subjects[match["label"]].add(match["subject"])
        image = cv2.imread(str(path))
        assert image.shape == (64, 64, 3) and image.max() > 0
    assert subjects == {"all": {"1", "2", "3"}, "hem": {"H1", "H2", "H3"}}
    assert sorted(p.name for p in (tmp_path / "a").rglob("*")) == sorted(
        ["all", "hem", *[p.name for p in paths]]
    )  # nothing else: no temporary files left behind
    write_annotated_folder(tmp_path / "b", n_all=7, n_hem=5, n_subjects=3, seed=1, size=64)
    assert _written(tmp_path / "a") == _written(tmp_path / "b")
    write_annotated_folder(tmp_path / "c", n_all=7, n_hem=5, n_subjects=3, seed=2, size=64)
    assert _written(tmp_path / "a") != _written(tmp_path / "c")


def test_annotated_folder_refuses_to_clobber(tmp_path):
    paths = write_annotated_folder(tmp_path, n_all=2, n_hem=2, seed=0, size=64, ext=".png")
    assert all(p.suffix == ".png" for p in paths)
    paths[0].write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_annotated_folder(tmp_path, n_all=2, n_hem=2, seed=0, size=64, ext=".png")
    assert paths[0].read_bytes() == b"the user's own file"
    write_annotated_folder(tmp_path, n_all=2, n_hem=2, seed=0, size=64, ext=".png", overwrite=True)
    assert cv2.imread(str(paths[0])) is not None
    with pytest.raises(ValueError, match="ext"):
        write_annotated_folder(tmp_path / "x", n_all=1, n_hem=1, ext=".gif")


def test_command_line_rewrites_the_shipped_samples(tmp_path):
    assert synthetic.main(["--write-samples", str(tmp_path)]) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "single_all_cell.png",
        "single_hem_cell.png",
        "field_of_cells.png",
        "field_of_cells.json",
    }
    if not (SHIPPED / "single_all_cell.png").is_file():
        pytest.skip("sample_data/ not shipped here")
    for name in ("single_all_cell.png", "single_hem_cell.png", "field_of_cells.png"):
        fresh = cv2.imread(str(tmp_path / name)).astype(int)
        shipped = cv2.imread(str(SHIPPED / name)).astype(int)
        assert np.abs(fresh - shipped).mean() < 0.5, f"{name}: rerun --write-samples sample_data/"
    fresh_truth = json.loads((tmp_path / "field_of_cells.json").read_text())["cells"]
    shipped_truth = json.loads((SHIPPED / "field_of_cells.json").read_text())["cells"]
    assert [c["label"] for c in fresh_truth] == [c["label"] for c in shipped_truth]


def test_command_line_writes_an_annotated_folder(tmp_path, capsys):
    argv = ["--annotated", str(tmp_path), "--n-all", "2", "--n-hem", "3", "--size", "48"]
    assert synthetic.main(argv) == 0
    assert len(list(tmp_path.rglob("*.bmp"))) == 5
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(argv)
    assert exit_info.value.code == 1
    assert "overwrite" in capsys.readouterr().err
