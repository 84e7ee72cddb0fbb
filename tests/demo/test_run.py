"""The demo end to end with the quick setting: generated set, training, report, field, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.demo import run as demo
from napari_allbag.demo.run import (
    OVERLAY_CAPTION,
    QUICK_SETTINGS,
    DemoError,
    check_out_dir,
    default_out_dir,
    demo_settings,
    field_image,
    is_finished_demo,
    run_demo,
    true_classes,
)
from napari_allbag.evaluation.report import REPORT_MODELS
from napari_allbag.inference.overlay import draw_overlay, marks_from_table
from napari_allbag.model.bundle import load_bundle
from napari_allbag.model.networks import CLASS_NAMES
from napari_allbag.progress import drive
from napari_allbag.segmentation.dark import segment_image


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One quick demo run (shared by the tests of this module) and the events it yielded."""
    out_dir = tmp_path_factory.mktemp("demo") / "allbag-demo"
    events = []
    result = drive(run_demo(out_dir, quick=True, device="cpu"), events.append)
    return result, events


def read_results(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_step_reports_progress(finished):
    result, events = finished
    stages = [event.stage for event in events]
    for stage in (
        "generating cells",
        "preprocess",
        "stage1-A",
        "stage1-B",
        "stage2",
        "segmenting",
        "classify",
        "writing results",
    ):
        assert stage in stages, stage
    assert stages.index("generating cells") < stages.index("stage1-A") < stages.index("classify")
    assert result.settings == QUICK_SETTINGS
    assert result.seconds > 0


def test_the_generated_set_is_kept(finished):
    result, _ = finished
    n = QUICK_SETTINGS.cells_per_class
    for label in ("all", "hem"):
        files = sorted((result.data_dir / label).glob(f"UID_*_{label}.bmp"))
        assert len(files) == n
        image = cv2.imread(str(files[0]))
        assert image.shape == (QUICK_SETTINGS.image_size, QUICK_SETTINGS.image_size, 3)


def test_the_bundle_loads_with_the_demo_backbone(finished):
    result, _ = finished
    assert result.bundle_path == result.out_dir / "bundle"
    bundle = load_bundle(result.bundle_path, "cpu")
    assert bundle.backbone.name == QUICK_SETTINGS.backbone
    assert bundle.backbone.img_size == QUICK_SETTINGS.img_size
    assert bundle.segmentation.crop_size == QUICK_SETTINGS.img_size
    assert bundle.meta["training"]["config"]["pretrained"] is False


def test_the_bundle_carries_a_model_card_that_says_synthetic(finished):
    from napari_allbag.model.card import SYNTHETIC_WARNING, read_model_card

    result, _ = finished
    card, stored = read_model_card(result.bundle_path)
    assert stored and card["warnings"] == [SYNTHETIC_WARNING]
    data = card["training_data"]
    assert data["synthetic"] and data["folder"] == str(result.data_dir)
    cells = data["cells"]
    total = sum(cells["train"].values()) + sum(cells["val"].values())
    assert total == 2 * result.settings.cells_per_class
    assert data["subjects"]["val"] >= 2 and not set(data["subject_ids"]["train"]) & set(
        data["subject_ids"]["val"]
    )
    assert card["validation"]["cells"] == result.report["n_cells"]


def test_the_report_has_table_1_for_each_model(finished):
    result, _ = finished
    report = json.loads(result.report_json_path.read_text(encoding="utf-8"))
    validation_cells = report["n_cells"]
    assert validation_cells > 0
    for name in REPORT_MODELS:
        table = report["models"][name]
        for class_name in CLASS_NAMES:
            row = table["per_class"][class_name]
            assert set(row) >= {"precision", "recall", "f1", "support"}
        assert table["weighted_avg"]["support"] == validation_cells
        assert sum(table["per_class"][c]["support"] for c in CLASS_NAMES) == validation_cells
        assert report["weighted_f1"][name] == table["weighted_avg"]["f1"]
    text = result.report_text_path.read_text(encoding="utf-8")
    assert text == result.report_text
    for row_name in ("HEM", "ALL", "weighted avg", *REPORT_MODELS):
        assert row_name in text
    assert result.weighted_f1 == report["weighted_f1"]


def test_results_have_one_row_per_segmented_cell(finished):
    result, _ = finished
    bundle = load_bundle(result.bundle_path, "cpu")
    image, truth = field_image()
    assert bundle.segmentation.largest_only is False  # a bundle finds every cell of a field
    segmented = segment_image(image, bundle.segmentation)
    rows = read_results(result.results_path)
    assert segmented.n_cells == len(truth)  # the field's cells, not its debris
    assert len(rows) == segmented.n_cells == result.cells
    assert [int(r["cell_id"]) for r in rows] == list(segmented.table["cell_id"])
    np.testing.assert_allclose(
        [float(r["centroid_row"]) for r in rows], segmented.table["centroid_row"], rtol=1e-5
    )
    for row in rows:
        p_all = [float(row[k]) for k in ("p_all_model_a", "p_all_model_b", "p_all_combined")]
        # the paper's rule: the single highest probability among the six wins
        candidates = [(p, "all") for p in p_all] + [(1 - p, "hem") for p in p_all]
        best, label = max(candidates)
        assert row["label"] == label
        assert float(row["confidence"]) == pytest.approx(best, abs=1e-4)
        assert row["true_class"] in ("all", "hem")
    assert result.n_all == sum(r["label"] == "all" for r in rows)
    assert result.matches_truth == sum(r["label"] == r["true_class"] for r in rows)


BOX_COLUMNS = ("cell_id", "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col")


def test_overlay_is_the_field_with_marks(finished):
    result, _ = finished
    image, _ = field_image()
    overlay = cv2.imread(str(result.overlay_path))
    assert overlay is not None and overlay.shape == image.shape
    assert not np.array_equal(cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB), image)
    # the same calls and review flags as results.csv (a flagged cell yellow with "?", as in
    # predict --overlays and the viewer; the demo's overlay once left the flags out)
    rows = read_results(result.results_path)
    bundle = load_bundle(result.bundle_path, "cpu")
    labels = segment_image(image, bundle.segmentation).labels
    table = {name: np.array([float(r[name]) for r in rows]) for name in BOX_COLUMNS}
    marks = marks_from_table(
        table,
        [r["label"] for r in rows],
        [float(r["confidence"]) for r in rows],
        [r["review"] == "True" for r in rows],
    )
    expected = draw_overlay(image, labels, marks, OVERLAY_CAPTION)
    np.testing.assert_array_equal(cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB), expected)


def test_curves_log_and_summary(finished):
    result, _ = finished
    assert result.curves_path.stat().st_size > 0
    assert cv2.imread(str(result.curves_path)) is not None
    with open(result.log_path, newline="", encoding="utf-8") as handle:
        log = list(csv.DictReader(handle))
    assert {row["stage"] for row in log} == {"stage1-A", "stage1-B", "stage2"}
    assert max(int(row["epoch"]) for row in log) <= QUICK_SETTINGS.epochs
    summary = json.loads((result.out_dir / demo.DEMO_FILE).read_text(encoding="utf-8"))
    assert summary["finished"] is True
    assert "no diagnostic model" in summary["note"]
    assert summary["field"]["cells"] == result.cells
    assert summary["settings"]["backbone"] == QUICK_SETTINGS.backbone
    for relative in summary["files"].values():
        assert (result.out_dir / relative).exists()
    assert is_finished_demo(result.out_dir)


def test_intermediate_files_are_removed(finished):
    result, _ = finished
    training = result.out_dir / "training"
    assert (training / "config.json").is_file()
    assert not (training / "checkpoints").exists()
    assert not (training / "features").exists()
    assert not (result.out_dir / demo.CROP_CACHE).exists()
    assert not list(result.out_dir.glob(".*"))  # no temporary or hidden files left


def test_format_summary_names_the_figures_and_files(finished):
    result, _ = finished
    text = demo.format_summary(result)
    assert f"{result.weighted_f1['ensemble']:.2f}" in text
    assert f"{result.cells} cells found" in text
    assert f"{result.n_all} ALL" in text
    assert str(result.results_path) in text and str(result.overlay_path) in text
    assert "no diagnostic model" in text


def test_a_finished_demo_folder_is_refused(finished):
    result, _ = finished
    with pytest.raises(DemoError, match="already holds a finished demo.*--napari"):
        check_out_dir(result.out_dir)


def test_a_non_empty_folder_is_refused_and_left_alone(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine", encoding="utf-8")
    with pytest.raises(DemoError, match="not empty"):
        drive(run_demo(tmp_path, quick=True, device="cpu"))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert keep.read_text(encoding="utf-8") == "mine"


def test_a_file_as_out_dir_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(DemoError, match="is a file"):
        check_out_dir(target)


def test_an_empty_folder_is_accepted(tmp_path):
    assert check_out_dir(tmp_path) == tmp_path


def test_default_out_dir_is_new(tmp_path):
    first = default_out_dir(tmp_path)
    assert first.name.startswith("allbag-demo-") and not first.exists()
    first.mkdir()
    second = default_out_dir(tmp_path)
    assert second != first and not second.exists()


def test_settings_follow_the_device():
    assert demo_settings(quick=True, device="cuda") == QUICK_SETTINGS
    assert demo_settings(device="cpu") == demo.CPU_SETTINGS
    assert demo_settings(device="cuda:0") == demo.GPU_SETTINGS
    cpu, gpu = demo.CPU_SETTINGS, demo.GPU_SETTINGS
    assert gpu.img_size >= cpu.img_size and gpu.cells_per_class >= cpu.cells_per_class
    for settings in (cpu, gpu, QUICK_SETTINGS):
        assert settings.subjects_per_class >= 3  # a 7:3 split by subject needs several subjects


def test_true_classes_match_centroids_to_the_truth_boxes():
    truth = [
        {"label": "all", "bbox": [10, 10, 50, 50]},
        {"label": "hem", "bbox": [100, 10, 150, 60]},
    ]
    table = {
        "cell_id": np.array([1, 2, 3]),
        "centroid_row": np.array([120.0, 30.0, 300.0]),
        "centroid_col": np.array([30.0, 30.0, 300.0]),
    }
    assert true_classes(table, truth) == ["hem", "all", ""]


def test_progress_names_the_bundle_where_the_demo_leaves_it(tmp_path):
    from napari_allbag.demo.run import _named_for_demo
    from napari_allbag.progress import Progress, drive

    run_dir, out_dir = tmp_path / "training", tmp_path

    def trainer():
        yield Progress(1, 2, "report", "saving")
        yield Progress(2, 2, "report", f"done: bundle in {run_dir / 'bundle'}")
        return "result"

    events = []
    assert drive(_named_for_demo(trainer(), run_dir, out_dir), events.append) == "result"
    assert events[-1].message == f"done: bundle in {out_dir / 'bundle'}"
