"""`napari-allbag segment`: crops, cells.csv, errors.csv, and the refusals that protect data."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.cli.main import main
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
    assert "could not be read" in report.err and "1 image(s) had no cell" in report.err


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
    ):
        assert option in shown
