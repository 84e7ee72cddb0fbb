"""`napari-allbag segment`: crops, cells.csv, errors.csv, and the refusals that protect data."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.cli.main import main
from napari_allbag.data.synthetic_brightfield import BrightfieldLook, make_brightfield_field
from napari_allbag.segmentation.to_folder import CELLS_COLUMNS, unique_stems
from tests.drawn_cells import FIELD_CELLS, field, single_cell


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def inputs(tmp_path) -> Path:
    """all/a.bmp and hem/a.bmp (same stem), a field, an upper-case extension, a bad file."""
    root = tmp_path / "inputs"
    write_rgb(root / "all" / "a.bmp", single_cell(size=150, seed=1))
    write_rgb(root / "hem" / "a.bmp", single_cell(size=150, seed=2))
    write_rgb(root / "fields" / "field.PNG", field())
    write_rgb(root / "black.png", np.zeros((40, 40, 3), np.uint8))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_segment_writes_crops_cells_and_errors_and_leaves_inputs_alone(inputs, tmp_path, capsys):
    before = snapshot(inputs)
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(inputs),
            "--out",
            str(out),
            "--workers",
            "1",
            "--crop-size",
            "64",
            "--quiet",
        ]
    )
    assert code == 0
    assert snapshot(inputs) == before

    cells = read_csv(out / "cells.csv")
    assert list(cells[0]) == list(CELLS_COLUMNS)
    assert len(cells) == 2 + len(FIELD_CELLS)
    crops = sorted(p.name for p in (out / "crops").iterdir())
    assert crops == sorted(Path(row["crop"]).name for row in cells)
    assert {"all__a_cell1.png", "hem__a_cell1.png", "field_cell1.png"} <= set(crops)
    for row in cells:
        crop = cv2.imread(str(out / row["crop"]))
        assert crop.shape == (64, 64, 3)
    field_rows = [row for row in cells if row["source"].endswith("field.PNG")]
    assert [row["cell_id"] for row in field_rows] == [str(i) for i in range(1, 5)]
    assert sum(row["touches_border"] == "True" for row in field_rows) == 1
    assert float(field_rows[0]["area"]) > 1000

    errors = read_csv(out / "errors.csv")
    assert [Path(row["file"]).name for row in errors] == ["broken.jpg"]
    assert "not an image" in errors[0]["reason"]
    assert not list(out.glob(".*.tmp")) and not list((out / "crops").glob(".*"))
    report = capsys.readouterr()
    assert "could not be read" in report.err and "1 with no cell found" in report.err
    assert "black.png: dark background (auto): " in report.err  # the warning names the image


def test_workers_give_the_same_tables_as_one_process(inputs, tmp_path):
    for workers in ("1", "2"):
        assert (
            main(
                [
                    "segment",
                    str(inputs),
                    "--out",
                    str(tmp_path / workers),
                    "--workers",
                    workers,
                    "--crop-size",
                    "32",
                    "--quiet",
                ]
            )
            == 0
        )
    assert read_csv(tmp_path / "1" / "cells.csv") == read_csv(tmp_path / "2" / "cells.csv")
    assert snapshot(tmp_path / "1" / "crops") == snapshot(tmp_path / "2" / "crops")


def test_non_empty_out_is_refused_unless_overwrite(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["segment", str(inputs / "all"), "--out", str(out), "--workers", "1", "--quiet"]
    assert main(args) == 0
    (out / "crops" / "stale_cell7.png").write_bytes(b"old")
    capsys.readouterr()
    assert main(args) == 2
    refusal = capsys.readouterr().err
    assert "not empty" in refusal and "--overwrite" in refusal
    assert (out / "crops" / "stale_cell7.png").exists()
    assert main([*args, "--overwrite", "--min-area", "50", "--erosion-size", "5"]) == 0
    assert sorted(p.name for p in (out / "crops").iterdir()) == ["a_cell1.png"]


def test_out_inside_an_input_folder_is_refused(inputs, capsys):
    code = main(["segment", str(inputs), "--out", str(inputs / "results"), "--quiet"])
    assert code == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert not (inputs / "results").exists()


def test_nothing_readable_exits_non_zero_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "one.png").write_bytes(b"nope")
    (bad / "two.tif").write_bytes(b"")
    code = main(["segment", str(bad), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"])
    assert code == 1
    assert "none of the inputs could be read" in capsys.readouterr().err
    assert len(read_csv(tmp_path / "out" / "errors.csv")) == 2


def test_missing_input_and_empty_folder_are_clear_errors(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert (
        main(["segment", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--crop-size", "0"])
        == 2
    )


def test_unique_stems_tell_colliding_names_apart(tmp_path):
    paths = [
        tmp_path / "all" / "a.bmp",
        tmp_path / "hem" / "a.bmp",
        tmp_path / "x" / "b.png",
        tmp_path / "x" / "b.tif",
        tmp_path / "x" / "B.png",
        tmp_path / "c.bmp",
    ]
    names = unique_stems(paths)
    assert names[paths[0]] == "all__a" and names[paths[1]] == "hem__a"
    assert names[paths[5]] == "c"
    assert len({name.lower() for name in names.values()}) == len(paths)


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for option in (
        "--out",
        "--workers",
        "--crop-size",
        "--erosion-size",
        "--min-area",
        "--overwrite",
        "--background",
        "--tile-above",
        "--tile-size",
    ):
        assert option in shown
    assert "auto" in shown and "dark" in shown and "bright" in shown


@pytest.fixture(scope="module")
def smear(tmp_path_factory):
    """A generated bright-field field (PNG and uncompressed TIFF) and its truth."""
    image, truth = make_brightfield_field(3, shape=(750, 1000), look=BrightfieldLook(scale=0.5))
    folder = tmp_path_factory.mktemp("smear")
    write_rgb(folder / "png" / "smear.png", image)
    import tifffile

    (folder / "tif").mkdir()
    tifffile.imwrite(folder / "tif" / "smear.tif", image)
    return folder, truth


def white_cell_hits(rows: list[dict[str, str]], truth) -> list[int | None]:
    """Per found cell: the index of the white cell whose disc holds its centroid, or None."""
    hits = []
    for row in rows:
        centre = np.array([float(row["centroid_row"]), float(row["centroid_col"])])
        inside = [
            i
            for i, cell in enumerate(truth.white_cells)
            if np.hypot(*(centre - np.array(cell.centre))) < cell.radius
        ]
        hits.append(inside[0] if inside else None)
    return hits


def test_auto_background_finds_white_cells_not_red_cells_and_says_bright(smear, tmp_path, capsys):
    folder, truth = smear
    out = tmp_path / "out"
    assert main(["segment", str(folder / "png"), "--out", str(out), "--quiet"]) == 0
    rows = read_csv(out / "cells.csv")
    hits = white_cell_hits(rows, truth)
    assert rows and None not in hits  # every cell found is a white cell: no red cell, no platelet
    assert len(set(hits)) == len(hits)  # one cell per white cell
    assert set(hits) == set(range(truth.n_white))  # every white cell, "all" and "hem" alike
    assert {row["mode"] for row in rows} == {"bright"}
    assert all(row["keep_reason"] for row in rows)
    printed = capsys.readouterr()
    assert "1 image: bright-field (auto)" in printed.out + printed.err


def test_background_dark_on_a_smear_warns_of_a_doubtful_segmentation(smear, tmp_path, capsys):
    folder, _ = smear
    out = tmp_path / "out"
    args = ["segment", str(folder / "png"), "--out", str(out), "--quiet", "--background", "dark"]
    assert main(args) == 0
    rows = read_csv(out / "cells.csv")
    assert {row["mode"] for row in rows} == {"dark"}
    err = capsys.readouterr().err
    assert "smear.png: dark background (set): doubtful segmentation: one cell covers most" in err
    assert "1 image: dark background (set); 1 doubtful segmentation: see the warnings" in err


def test_background_bright_on_a_cell_on_black_finds_no_white_cell_and_says_so(tmp_path, capsys):
    write_rgb(tmp_path / "in" / "cell.png", single_cell(size=150, seed=1))
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "in"), "--out", str(out), "--quiet", "--background", "bright"]
    assert main(args) == 0
    assert read_csv(out / "cells.csv") == []
    err = capsys.readouterr().err
    assert "cell.png: bright-field (set): no white cell found" in err
    assert "1 with no white cell found" in err


def test_an_unknown_background_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--background", "grey"])
    assert "auto" in capsys.readouterr().err


def test_a_large_tiff_is_segmented_in_tiles_like_in_one_piece(smear, tmp_path, capsys):
    folder, _ = smear
    whole, tiled = tmp_path / "whole", tmp_path / "tiled"
    base = ["segment", str(folder / "tif"), "--quiet", "--workers", "1"]
    assert main([*base, "--out", str(whole)]) == 0
    # 0.75 MP is above 0.5 MP: tiles of 800 px (overlap 256) cover the field in 2 windows.
    # (Much smaller tiles each hold too few red cells for the bright-field thresholds, which
    # are taken per window: a known limit of tiling.)
    assert main([*base, "--out", str(tiled), "--tile-above", "0.5", "--tile-size", "800"]) == 0
    one, many = read_csv(whole / "cells.csv"), read_csv(tiled / "cells.csv")
    assert len(one) == len(many) > 0
    key = ("centroid_row", "centroid_col")
    for a, b in zip(sorted(one, key=lambda r: float(r["bbox_min_row"])), many, strict=True):
        assert all(abs(float(a[k]) - float(b[k])) < 3 for k in key)
        assert b["mode"] == "bright"
    assert len(list((tiled / "crops").iterdir())) == len(many)
    assert "1 image: bright-field (auto)" in "".join(capsys.readouterr())


def test_tiles_must_be_larger_than_their_overlap(smear, tmp_path, capsys):
    folder, _ = smear
    args = ["segment", str(folder / "tif"), "--out", str(tmp_path / "o"), "--tile-size", "200"]
    assert main(args) == 2
    assert "--tile-size must exceed" in capsys.readouterr().err
