"""The Classify widget runs a whole folder (as `predict` does) and reopens any image of the run."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_allbag.data.synthetic import make_field
from napari_allbag.inference.columns import RESULT_COLUMNS, SUMMARY_COLUMNS
from napari_allbag.widgets.classify import CELLS_LAYER, CLASSES_LAYER, ClassifyWidget
from napari_allbag.widgets.results import result_name
from tests.faults import nan_probabilities
from tests.model_factory import make_tiny_bundle


@pytest.fixture(autouse=True)
def _private_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ALLBAG_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=11)


def _image_folder(folder, count: int, cells: tuple[int, ...] = (4, 6)):
    folder.mkdir()
    for i in range(count):
        image, _ = make_field(seed=20 + i, n_cells=cells[i % len(cells)], shape=(320, 320))
        assert cv2.imwrite(str(folder / f"field_{i}.png"), np.ascontiguousarray(image[..., ::-1]))
    return folder


def _rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == RESULT_COLUMNS
        return list(reader)


def _widget(viewer, bundle_dir, folder) -> ClassifyWidget:
    widget = ClassifyWidget(viewer)
    assert widget.set_bundle(bundle_dir)
    widget.folder_edit.setText(str(folder))
    return widget


def test_classify_folder_writes_csv_and_reopens(make_napari_viewer, qtbot, bundle_dir, tmp_path):
    folder = _image_folder(tmp_path / "images", 2)
    viewer = make_napari_viewer()
    widget = _widget(viewer, bundle_dir, folder)
    assert widget.results_path() == folder / "allbag-results.csv"
    widget.classify_folder()
    assert widget.is_running
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)

    run = widget.folder_run
    assert run is not None, widget.status.text()
    rows = _rows(folder / "allbag-results.csv")
    per_image = {item.path.name: len(item.predictions) for item in run.files}
    assert sorted(per_image) == ["field_0.png", "field_1.png"]
    assert all(n > 0 for n in per_image.values())
    for name, n in per_image.items():
        assert sum(row["source"].endswith(name) for row in rows) == n
    assert widget.run_images.count() == 2
    assert widget.open_button.isEnabled()
    with open(folder / "allbag-results.images.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))  # the per-image summary, as predict writes it
    assert tuple(summary[0]) == SUMMARY_COLUMNS
    assert {Path(row["source"]).name: int(row["cells"]) for row in summary} == per_image
    assert run.summary_path == folder / "allbag-results.images.csv"
    assert "allbag-results.images.csv" in widget.status.text()

    assert widget.open_run_image(1)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    cells = viewer.layers[result_name(CELLS_LAYER, "field_1")]
    assert "field_1" in viewer.layers
    assert len(cells.features) == per_image["field_1.png"]
    assert len(np.setdiff1d(np.unique(cells.data), [0])) == per_image["field_1.png"]
    mine = [row for row in rows if row["source"].endswith("field_1.png")]
    np.testing.assert_allclose(
        cells.features["p_all_combined"], [float(r["p_all_combined"]) for r in mine], atol=1e-5
    )
    assert list(cells.features["label"]) == [r["label"] for r in mine]
    classes = viewer.layers[result_name(CLASSES_LAYER, "field_1")]
    assert len(classes.data) == per_image["field_1.png"]
    layers = list(viewer.layers)
    assert layers.index(cells) == layers.index(viewer.layers["field_1"]) + 1
    assert result_name(CELLS_LAYER, "field_0") not in viewer.layers  # only what was opened


def test_classify_folder_to_a_chosen_csv_and_refuses_the_bundle(
    make_napari_viewer, qtbot, bundle_dir, tmp_path
):
    folder = _image_folder(tmp_path / "images", 1)
    viewer = make_napari_viewer()
    widget = _widget(viewer, bundle_dir, folder)
    widget.results_edit.setText(str(bundle_dir / "results.csv"))
    widget.classify_folder()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    assert widget.folder_run is None
    assert "Error" in widget.status.text()
    assert not (bundle_dir / "results.csv").exists()

    chosen = tmp_path / "out" / "mine.csv"
    widget.results_edit.setText(str(chosen))
    widget.classify_folder()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    assert len(_rows(chosen)) == len(widget.folder_run.files[0].predictions) > 0
    assert not (folder / "allbag-results.csv").exists()


def test_classify_folder_draws_overlays_outside_the_image_folder_only(
    make_napari_viewer, qtbot, bundle_dir, tmp_path
):
    folder = _image_folder(tmp_path / "images", 2)
    viewer = make_napari_viewer()
    widget = _widget(viewer, bundle_dir, folder)
    widget.overlays_edit.setText(str(folder / "overlays"))  # the next run would read them
    widget.classify_folder()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    assert widget.folder_run is None and widget.progress.value() == 0
    assert "Error" in widget.status.text() and "overlays folder" in widget.status.text()
    assert not (folder / "overlays").exists() and not (folder / "allbag-results.csv").exists()

    overlays = tmp_path / "overlays"
    widget.overlays_edit.setText(str(overlays))
    widget.classify_folder()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    run = widget.folder_run
    assert run is not None, widget.status.text()
    pictures = sorted(p.name for p in overlays.glob("*.png"))
    assert pictures == ["00001_field_0.png", "00002_field_1.png"]  # as predict --overlays
    assert (run.overlays_path, run.overlays_written) == (overlays, 2)
    assert f"overlays of 2 image(s) in {overlays}" in widget.status.text()
    assert widget.progress.value() == widget.progress.maximum() > 0  # done: 100 %, not 0 %
    widget.show()
    qtbot.wait(200)  # the long status (four lines) pushes the rows below it down, whole
    status, below = widget.status.geometry(), widget.summary.geometry()
    assert status.height() >= widget.status.heightForWidth(status.width()) > 40
    assert status.bottom() < below.top()
    image = cv2.imread(str(folder / "field_0.png"))
    picture = cv2.imread(str(overlays / pictures[0]))
    assert picture.shape == image.shape and np.any(picture != image)  # cells outlined, tagged


def test_cancel_a_folder_run(make_napari_viewer, qtbot, bundle_dir, tmp_path):
    folder = _image_folder(tmp_path / "images", 6)
    viewer = make_napari_viewer()
    widget = _widget(viewer, bundle_dir, folder)
    widget.classify_folder()
    widget.cancel()  # stops at the first yield after the model has loaded
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    assert widget.folder_run is None
    assert "cancelled" in widget.status.text()
    assert not (folder / "allbag-results.csv").exists()
    assert sorted(p.suffix for p in folder.iterdir()) == [".png"] * 6  # no temporary file left
    assert widget.folder_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_a_non_finite_probability_stops_the_folder_run(
    make_napari_viewer, qtbot, bundle_dir, tmp_path, monkeypatch
):
    nan_probabilities(monkeypatch, "p_all_model_b")
    folder = _image_folder(tmp_path / "images", 2)
    widget = _widget(make_napari_viewer(), bundle_dir, folder)
    widget.classify_folder()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    assert widget.folder_run is None
    assert "non-finite probability (p_all_model_b)" in widget.status.text()
    assert not (folder / "allbag-results.csv").exists()
    assert not (folder / "allbag-results.images.csv").exists()
    for kept in folder.glob("*.partial"):  # the rows before the first NaN, never a NaN
        assert "nan" not in kept.read_text().lower()
