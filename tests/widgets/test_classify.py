"""The Classify widget in a real viewer: segment + classify an image, reuse the Segment layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_allbag.data.synthetic import make_field
from napari_allbag.defaults import PREDICTION_COLUMNS
from napari_allbag.model.bundle import load_bundle
from napari_allbag.segmentation.dark import SegmentationParams, segment_image
from napari_allbag.widgets.classify import (
    ALL_COLOUR,
    CELLS_LAYER,
    CLASSES_LAYER,
    CROPS_LAYER,
    HEM_COLOUR,
    ClassifyWidget,
)
from napari_allbag.widgets.results import FLAGGED_COLOUR, mark_result, result_name
from tests.model_factory import make_tiny_bundle

CELLS_FIELD = result_name(CELLS_LAYER, "field")
CROPS_FIELD = result_name(CROPS_LAYER, "field")


@pytest.fixture(autouse=True)
def _private_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ALLBAG_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=11)


@pytest.fixture(scope="module")
def field():
    image, _ = make_field(seed=3, n_cells=5, shape=(360, 360))
    return image


def _expected_probs(bundle_dir, crops):
    bundle = load_bundle(bundle_dir, "cpu")
    with torch.no_grad():
        return bundle.ensemble(torch.from_numpy(crops)).numpy()


def _run(widget, qtbot):
    widget.run()
    assert widget.is_running
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)


def test_classify_an_image_layer(make_napari_viewer, qtbot, bundle_dir, field, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(field, name="field", rgb=True)
    viewer.add_image(np.zeros((2, 8, 8, 3), np.uint8), name=CROPS_LAYER, rgb=True)  # stale
    widget = ClassifyWidget(viewer)
    assert widget.device_label.text().startswith("Device: ")
    assert widget.set_bundle(bundle_dir)
    assert "test_resnet" in widget.bundle_info.text()
    assert widget.layer_combo.currentText() == "field"
    _run(widget, qtbot)

    segmented = segment_image(field, SegmentationParams(crop_size=64))
    cells = viewer.layers[CELLS_FIELD]
    np.testing.assert_array_equal(cells.data, segmented.labels)
    np.testing.assert_array_equal(cells.metadata["allbag_crops"], segmented.crops)
    assert viewer.layers[CROPS_LAYER].data.shape == (2, 8, 8, 3)  # another layer: left alone
    assert cells.contour > 0  # outlines, the morphology stays visible
    features = cells.features
    assert set(PREDICTION_COLUMNS) <= set(features.columns)
    assert len(features) == segmented.n_cells > 0
    expected = _expected_probs(bundle_dir, segmented.crops)
    assert np.allclose(features["p_all_combined"], expected[:, 2, 1], atol=1e-5)
    flagged = features["review"].to_numpy(dtype=bool)
    for i, (cell_id, label) in enumerate(zip(features["cell_id"], features["label"], strict=True)):
        colour = ALL_COLOUR if label == "all" else HEM_COLOUR
        assert np.allclose(cells.get_color(int(cell_id)), FLAGGED_COLOUR if flagged[i] else colour)
    points = viewer.layers[result_name(CLASSES_LAYER, "field")]
    assert len(points.data) == len(features)
    diameter = float(np.median(features["equivalent_diameter"]))  # the dot leaves the cell seen
    assert np.all(points.size <= max(2.0, 0.15 * diameter) + 1e-6)
    mark = " ?" if flagged[0] else ""
    assert (
        points.features["text"][0]
        == f"{features['label'][0].upper()} {features['confidence'][0]:.2f}{mark}"
    )

    n_all = int((features["label"] == "all").sum())
    assert widget.summary.text().startswith(f"{len(features)} cell(s): {n_all} ALL")

    exported = widget.export_csv(tmp_path / "cells.csv")
    text = exported.read_text().splitlines()
    assert len(text) == len(features) + 1 and "p_all_model_a" in text[0]

    # TTA and another rule, then the selected cell's Grad-CAM heatmap over its crop
    widget.rule_combo.setCurrentText("mean")
    widget.tta_check.setChecked(True)
    _run(widget, qtbot)
    features = cells.features
    mean = features[["p_all_model_a", "p_all_model_b", "p_all_combined"]].mean(axis=1)
    assert np.allclose(features["p_all"], mean, atol=1e-5)
    assert (features["tta_spread"] >= 0).all()
    cells.selected_label = int(features["index"][0])
    heatmap = widget.show_heatmap()
    assert heatmap.data.shape == segmented.crops[0].shape and heatmap.data.dtype == np.uint8

    # the bundle folder is remembered for the next widget
    again = ClassifyWidget(viewer)
    assert again.bundle_path == bundle_dir.resolve()
    widget.close()
    assert widget._holder.bundle is None


def test_classify_the_segment_widgets_layers(make_napari_viewer, qtbot, bundle_dir, field):
    viewer = make_napari_viewer()
    segmented = segment_image(field, SegmentationParams(crop_size=64), source="field")
    viewer.add_image(field, name="field", rgb=True)
    cells = viewer.add_labels(segmented.labels, name=CELLS_FIELD, features=segmented.table)
    mark_result(cells, CELLS_LAYER, "field")
    # crops of another cell's pixels: the widget must use this layer as given when it matches
    crops = segmented.crops[::-1].copy()
    mark_result(viewer.add_image(crops, name=CROPS_FIELD, rgb=True), CROPS_LAYER, "field")
    widget = ClassifyWidget(viewer)
    widget.set_bundle(bundle_dir)
    widget.layer_combo.setCurrentText(CELLS_FIELD)
    _run(widget, qtbot)
    features = viewer.layers[CELLS_FIELD].features
    assert np.allclose(
        features["p_all_model_a"], _expected_probs(bundle_dir, crops)[:, 0, 1], atol=1e-5
    )

    # crops of another size do not match: the cells are cut again from the image
    viewer.layers[CROPS_FIELD].data = np.zeros((len(crops), 32, 32, 3), np.uint8)
    widget.layer_combo.setCurrentText(CELLS_FIELD)
    _run(widget, qtbot)
    features = viewer.layers[CELLS_FIELD].features
    expected = _expected_probs(bundle_dir, segmented.crops)
    assert np.allclose(features["p_all_model_b"], expected[:, 1, 1], atol=1e-5)
    assert list(features["area"]) == list(segmented.table["area"])  # Segment's columns are kept


def test_bad_bundle_and_release(make_napari_viewer, qtbot, bundle_dir, field, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(field, name="field", rgb=True)
    widget = ClassifyWidget(viewer)
    assert not widget.set_bundle(tmp_path)
    assert "bundle.json is missing" in widget.bundle_info.text()
    widget.run()
    assert not widget.is_running and "Error" in widget.status.text()

    widget.set_bundle(bundle_dir)
    _run(widget, qtbot)
    assert widget._holder.bundle is not None
    other = make_tiny_bundle(tmp_path / "other", seed=12)
    widget.set_bundle(other)
    assert widget._holder.bundle is None  # the old model is released at once


def test_docks_from_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-allbag", "Classify cells")
    assert isinstance(widget, ClassifyWidget)


def test_cancel_stops_the_run_without_results(make_napari_viewer, qtbot, bundle_dir, field):
    viewer = make_napari_viewer()
    viewer.add_image(field, name="field", rgb=True)
    widget = ClassifyWidget(viewer)
    widget.set_bundle(bundle_dir)
    widget.run()
    widget.cancel()  # napari's worker stops at the job's next yield
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)
    assert widget.status.text() == "cancelled"
    assert CELLS_LAYER not in viewer.layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_a_new_cells_layer_becomes_the_choice(make_napari_viewer, field):
    viewer = make_napari_viewer()
    viewer.add_image(field, name="field", rgb=True)
    widget = ClassifyWidget(viewer)
    assert widget.layer_combo.currentText() == "field"
    segmented = segment_image(field, SegmentationParams(crop_size=64), source="field")
    viewer.add_labels(segmented.labels, name=CELLS_LAYER, features=segmented.table)
    assert widget.layer_combo.currentText() == CELLS_LAYER
    viewer.add_image(field, name="another image", rgb=True)  # a newly opened image is picked
    assert widget.layer_combo.currentText() == "another image"


def test_background_choice_reaches_the_segmentation(make_napari_viewer, qtbot, bundle_dir):
    from napari_allbag.data.synthetic_brightfield import BrightfieldLook, make_brightfield_field
    from napari_allbag.segmentation.brightfield import segment_auto

    smear, _ = make_brightfield_field(3, shape=(750, 1000), look=BrightfieldLook(scale=0.5))
    viewer = make_napari_viewer()
    viewer.add_image(smear, name="smear", rgb=True)
    widget = ClassifyWidget(viewer)
    assert widget.set_bundle(bundle_dir)
    choices = [widget.background_combo.itemText(i) for i in range(widget.background_combo.count())]
    assert choices == ["bundle's", "auto", "dark", "bright"] and widget.background() is None
    _run(widget, qtbot)  # the bundle's mode: auto, which finds the smear's white cells
    bright = segment_auto(smear, SegmentationParams(crop_size=64))
    cells = viewer.layers["cells [smear]"]
    assert len(cells.features) == bright.n_cells > 0
    assert set(cells.features["mode"]) == {"bright"}
    assert widget.status.text().startswith("bright-field (auto)")

    widget.background_combo.setCurrentText("dark")
    assert widget.background() == "dark"
    widget.layer_combo.setCurrentText("smear")  # segment the image again, not the cells found
    _run(widget, qtbot)
    assert set(viewer.layers["cells [smear]"].features["mode"]) == {"dark"}
    assert "doubtful segmentation" in widget.status.text()


def test_the_bundle_info_wraps_and_shows_whole_in_a_narrow_short_dock(
    make_napari_viewer, qtbot, tmp_path
):
    from tests.widgets.test_base import dock_in_window, squeezed

    metrics = {"validation": {"ensemble": {"weighted_f1": 0.9123}}}
    bundle = make_tiny_bundle(
        tmp_path / "a bundle", seed=5, crop_size=80, extra_meta={"metrics": metrics}
    )
    viewer = make_napari_viewer(show=True)
    _dock, widget = dock_in_window(viewer, qtbot, "Classify cells", width=300, height=450)
    assert widget.set_bundle(bundle)
    qtbot.wait(50)
    label = widget.bundle_info
    assert "crops 80 px" in label.text() and "validation weighted F1 0.912" in label.text()
    line = label.fontMetrics().height()
    assert label.heightForWidth(label.width()) >= 2 * line  # the text needs several lines here
    assert label.height() >= label.heightForWidth(label.width())  # and gets all of them
    assert widget.scroll.verticalScrollBar().maximum() > 0  # the short dock scrolls instead
    assert squeezed(widget) == []
