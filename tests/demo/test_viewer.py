"""`napari-allbag demo --napari`: the sample field, the four widgets and the bundle in a viewer."""

from __future__ import annotations

import json

import pytest

from napari_allbag.demo.run import DEMO_FILE, QUICK_SETTINGS
from napari_allbag.demo.viewer import WIDGETS, fill_train_widget, open_demo
from tests.model_factory import make_tiny_bundle


@pytest.fixture()
def bundle_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "bundle", crop_size=48)


def test_open_demo_docks_the_widgets_and_chooses_the_bundle(make_napari_viewer, bundle_dir):
    viewer = make_napari_viewer()
    widgets = open_demo(viewer, bundle_dir)
    assert list(widgets) == list(WIDGETS)
    docked = viewer.window.dock_widgets
    for name in WIDGETS:
        assert any(name in key for key in docked), (name, list(docked))
    field = viewer.layers["synthetic field of cells"]
    assert field.rgb and field.data.shape == (1024, 1024, 3)
    assert viewer.layers.selection.active is field
    classify = widgets["Classify cells"]
    assert classify.bundle_path == bundle_dir
    assert "Not usable" not in classify.bundle_info.text()
    assert widgets["Segment cells"].crop_size.value == 48


def test_segment_then_classify_the_field(make_napari_viewer, qtbot, bundle_dir):
    viewer = make_napari_viewer()
    widgets = open_demo(viewer, bundle_dir)
    segment, classify = widgets["Segment cells"], widgets["Classify cells"]
    segment.run()
    qtbot.waitUntil(lambda: segment.worker is None, timeout=60_000)
    cells = viewer.layers["cells [synthetic field of cells]"]
    n_cells = len(viewer.layers["synthetic field of cells"].metadata["cells"])
    assert len(cells.features) == n_cells
    assert classify.layer_combo.currentText() == cells.name  # the picker followed
    classify.run()
    qtbot.waitUntil(lambda: not classify.is_running, timeout=60_000)
    assert set(cells.features["label"]) <= {"all", "hem"}
    assert len(cells.features["confidence"]) == n_cells


def test_the_demo_classifies_the_field_and_the_cell_table_lists_it(
    make_napari_viewer, qtbot, bundle_dir
):
    viewer = make_napari_viewer(show=True)
    widgets = open_demo(viewer, bundle_dir, classify_field=True)
    classify, table = widgets["Classify cells"], widgets["Cell table"]
    assert classify.is_running  # started by the demo itself, in the background
    qtbot.waitUntil(lambda: not classify.is_running, timeout=120_000)
    cells = viewer.layers["cells [synthetic field of cells]"]
    n_cells = len(cells.features)
    assert n_cells > 0 and set(cells.features["label"]) <= {"all", "hem"}
    assert table.layer is cells
    assert table.table.rowCount() == n_cells
    assert f"{n_cells} cell(s) of 'synthetic field of cells'" in table.title.text()
    ids = sorted(int(table.table.item(row, 1).text()) for row in range(n_cells))
    assert ids == sorted(int(i) for i in cells.features["index"])
    qtbot.waitUntil(lambda: table.isVisible() and classify.isVisible())  # their tabs are raised


def test_a_demo_folder_fills_in_the_train_widget(make_napari_viewer, bundle_dir, tmp_path):
    demo_dir = tmp_path
    settings = QUICK_SETTINGS.to_dict()
    (demo_dir / DEMO_FILE).write_text(json.dumps({"settings": settings}), encoding="utf-8")
    viewer = make_napari_viewer()
    widgets = open_demo(viewer, bundle_dir, demo_dir)
    config = widgets["Train ensemble"].config()
    assert config.data_dir == demo_dir / "data"
    assert config.out_dir == demo_dir / "training-again"
    assert config.backbone == QUICK_SETTINGS.backbone
    assert config.epochs == QUICK_SETTINGS.epochs
    assert config.img_size == config.crop_size == QUICK_SETTINGS.img_size
    assert config.pretrained is False


def test_a_folder_without_demo_json_leaves_the_train_widget_alone(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _dock, train = viewer.window.add_plugin_dock_widget("napari-allbag", "Train ensemble")
    assert fill_train_widget(train, tmp_path) is False
    assert train.data_edit.text() == ""
