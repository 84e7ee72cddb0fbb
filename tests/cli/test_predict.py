"""`napari-allbag predict`: per-cell CSV, per-file summary, unreadable files skipped."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from napari_allbag.cli.main import main
from napari_allbag.cli.predict import SUMMARY_COLUMNS
from napari_allbag.data.synthetic import make_field
from napari_allbag.inference.columns import RESULT_COLUMNS
from napari_allbag.inference.overlay import CLASS_COLOURS, FLAGGED_COLOUR
from napari_allbag.segmentation.dark import SegmentationParams, segment_image
from tests.model_factory import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=7)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    nested = folder / "NESTED"
    nested.mkdir()
    cells = {}
    for seed, target in ((0, folder / "a.png"), (1, nested / "B.PNG")):
        image, _ = make_field(seed=seed, n_cells=3 + seed, shape=(320, 320))
        cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cells[target] = image
    (folder / "broken.png").write_bytes(b"this is not a png")
    return folder, cells


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_cells_and_summary(bundle_dir, images, tmp_path, capsys):
    folder, cells = images
    out, summary = tmp_path / "results.csv", tmp_path / "summary.csv"
    code = main(
        [
            "predict", str(bundle_dir), str(folder),
            "--out", str(out), "--summary", str(summary),
            "--device", "cpu", "--workers", "1", "--batch-size", "2", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    rows = _rows(out)
    assert tuple(rows[0]) == RESULT_COLUMNS
    params = SegmentationParams(crop_size=64)
    expected_cells = {str(p): segment_image(img, params).n_cells for p, img in cells.items()}
    found = {}
    for row in rows:
        found[row["source"]] = found.get(row["source"], 0) + 1
        p_all = [float(row[k]) for k in ("p_all_model_a", "p_all_model_b", "p_all_combined")]
        assert all(0.0 <= p <= 1.0 for p in p_all)
        confidence = float(row["confidence"])
        assert confidence == pytest.approx(max(max(p_all), 1 - min(p_all)), abs=1e-5)
        winner_is_all = max(p_all) >= 1 - min(p_all)  # the paper's rule on the three models
        assert row["label"] == ("all" if winner_is_all else "hem")
        assert int(row["bbox_min_row"]) < int(row["bbox_max_row"])
    assert found == expected_cells

    table = _rows(summary)
    assert tuple(table[0]) == SUMMARY_COLUMNS
    by_file = {row["source"]: row for row in table}
    broken = by_file[str(folder / "broken.png")]
    assert broken["cells"] == "0" and "not an image" in broken["error"]
    for source, count in expected_cells.items():
        n_all = sum(r["label"] == "all" for r in rows if r["source"] == source)
        assert by_file[source]["cells"] == str(count)
        assert by_file[source]["n_all"] == str(n_all)
        assert float(by_file[source]["all_fraction"]) == pytest.approx(n_all / count, abs=1e-4)

    printed = capsys.readouterr()
    assert "broken.png" in printed.err and "not an image" in printed.err
    assert f"Total: {len(rows)} cell(s) in 2 image(s)" in printed.out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_predict_refuses_to_overwrite_and_reports_bad_bundles(bundle_dir, images, tmp_path, capsys):
    folder, _ = images
    out = tmp_path / "results.csv"
    out.write_text("keep me")
    args = [
        "predict",
        str(bundle_dir),
        str(folder),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "keep me"

    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    code = main(["predict", str(not_a_bundle), str(folder), "--out", str(tmp_path / "r.csv")])
    assert code == 2
    assert "bundle.json is missing" in capsys.readouterr().err

    code = main(
        ["predict", str(bundle_dir), str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.csv")]
    )
    assert code == 2
    assert "no such file" in capsys.readouterr().err
    code = main(
        [
            "predict",
            str(bundle_dir),
            str(folder),
            "--out",
            str(tmp_path / "r.csv"),
            "--device",
            "tpu",
        ]
    )
    assert code == 2
    assert "Unknown device" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_predict_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--summary", "--device", "--batch-size", "--compile", "--workers"):
        assert option in text


def _run_predict(bundle_dir, folder, out, *extra):
    return main(
        [
            "predict", str(bundle_dir), str(folder), "--out", str(out),
            "--device", "cpu", "--workers", "1", "--batch-size", "8", "--quiet", *extra,
        ]
    )  # fmt: skip


def test_predict_rules_tta_review_summary_and_cam(bundle_dir, images, tmp_path, capsys):
    folder, cells = images
    plain, tta = tmp_path / "plain.csv", tmp_path / "tta.csv"
    assert _run_predict(bundle_dir, folder, plain, "--rule", "mean") == 0
    cams = tmp_path / "cams"
    assert _run_predict(bundle_dir, folder, tta, "--rule", "mean", "--tta", "--cam", str(cams)) == 0
    plain_rows, tta_rows = _rows(plain), _rows(tta)
    assert len(plain_rows) == len(tta_rows) > 0
    for row in plain_rows:  # mean rule: P(ALL) is the mean of the three, label p >= 0.5
        mean = sum(float(row[k]) for k in ("p_all_model_a", "p_all_model_b", "p_all_combined"))
        assert float(row["p_all"]) == pytest.approx(mean / 3, abs=1e-5)
        assert row["label"] == ("all" if float(row["p_all"]) >= 0.5 else "hem")
        assert row["tta_spread"] == "" and row["review"] in ("True", "False")
        assert (row["review"] == "True") == bool(row["review_reason"])
    assert all(float(row["tta_spread"]) >= 0 for row in tta_rows)
    summary = _rows(tmp_path / "tta.images.csv")
    assert tuple(summary[0]) == SUMMARY_COLUMNS
    by_file = {row["source"]: row for row in summary}
    for path in cells:
        row = by_file[str(path)]
        mine = [r for r in tta_rows if r["source"] == str(path)]
        assert int(row["cells"]) == len(mine) == int(row["n_all"]) + int(row["n_hem"])
        assert int(row["flagged"]) == sum(r["review"] == "True" for r in mine)
    pngs = sorted(cams.glob("*.png"))
    assert len(pngs) == len(tta_rows)
    overlay = cv2.imread(str(pngs[0]))
    assert overlay is not None and overlay.shape[:2] == (64, 64)


def test_predict_overlays_one_picture_per_image_beside_the_cams(
    bundle_dir, images, tmp_path, capsys
):
    folder, cells = images
    overlays, cams = tmp_path / "overlays", tmp_path / "cams"
    out = tmp_path / "r.csv"
    assert (
        _run_predict(bundle_dir, folder, out, "--overlays", str(overlays), "--cam", str(cams)) == 0
    )
    rows = _rows(out)
    said = capsys.readouterr().out
    assert f"Cell overlays of 2 image(s) -> {overlays}\n" in said  # broken.png: none, an error
    pictures = sorted(overlays.glob("*.png"))
    assert [p.name.split("_", 1)[1] for p in pictures] == ["B.png", "a.png"]  # input order
    assert len(sorted(cams.glob("*.png"))) == len(rows)  # the CAMs as without --overlays
    for picture, (path, image) in zip(pictures, sorted(cells.items()), strict=True):
        drawn = cv2.cvtColor(cv2.imread(str(picture)), cv2.COLOR_BGR2RGB)
        assert drawn.shape == image.shape
        mine = [r for r in rows if r["source"] == str(path)]
        for row in mine:  # each cell's outline colour says its class, or yellow when flagged
            colour = FLAGGED_COLOUR if row["review"] == "True" else CLASS_COLOURS[row["label"]]
            top, left = int(row["bbox_min_row"]), int(row["bbox_min_col"])
            bottom, right = int(row["bbox_max_row"]), int(row["bbox_max_col"])
            box = drawn[top:bottom, left:right]
            assert np.all(box == colour, axis=-1).sum() > 20, row["cell_id"]


def test_predict_threshold_needs_a_bundle_with_one(bundle_dir, images, tmp_path, capsys):
    folder, _ = images
    code = _run_predict(bundle_dir, folder, tmp_path / "r.csv", "--decision", "threshold")
    assert code == 2
    assert "no sensitivity threshold" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


def test_background_bright_on_dark_cells_says_so_per_image_and_in_the_summary(
    bundle_dir, images, tmp_path, capsys
):
    folder, cells = images
    args = ["predict", str(bundle_dir), str(folder), "--device", "cpu", "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "auto.csv"), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "2 images: dark background (auto)" in printed.out + printed.err
    assert {row["mode"] for row in _rows(tmp_path / "auto.csv")} == {"dark"}

    out = tmp_path / "bright.csv"
    assert main([*args, "--out", str(out), "--quiet", "--background", "bright"]) == 0
    err = capsys.readouterr().err
    for path in cells:
        assert f"{path}: bright-field (set): no white cell found" in err
    assert "2 images: bright-field (set); 2 with no white cell found: see the warnings" in err
    assert _rows(out) == []
