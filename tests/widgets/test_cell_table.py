"""Results belong to their image, the cell table, corrections and the annotated export, in a real
viewer (issue 12)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_allbag.data.annotations import scan_annotated_folder
from napari_allbag.data.synthetic import make_field
from napari_allbag.widgets.cell_table import CellTableWidget, subject_of
from napari_allbag.widgets.classify import ClassifyWidget, refresh_cells_display
from napari_allbag.widgets.results import CORRECTED_COLOUR, FLAGGED_COLOUR, cell_colours
from napari_allbag.widgets.segment import SegmentWidget
from tests.model_factory import make_tiny_bundle


@pytest.fixture(autouse=True)
def _private_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ALLBAG_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=11)


def _classify(widget, qtbot, layer_name: str) -> None:
    widget.layer_combo.setCurrentText(layer_name)
    widget.run()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)


def _two_images(viewer):
    first, _ = make_field(seed=3, n_cells=5, shape=(300, 300))
    second, _ = make_field(seed=4, n_cells=3, shape=(240, 260))
    viewer.add_image(first, name="one", rgb=True)
    viewer.add_image(second, name="two", rgb=True)


def test_results_belong_to_their_image(make_napari_viewer, qtbot, bundle_dir):
    viewer = make_napari_viewer()
    _two_images(viewer)
    widget = ClassifyWidget(viewer)
    widget.set_bundle(bundle_dir)
    assert widget.layer_combo.currentText() == "two"  # the newly opened image
    viewer.layers.selection.active = viewer.layers["one"]
    assert widget.layer_combo.currentText() == "one"  # the picker follows the active layer
    _classify(widget, qtbot, "one")
    one_cells = viewer.layers["cells [one]"]
    one_summary = widget.summary.text()
    assert one_summary.startswith(f"{len(one_cells.features)} cell(s)")
    names = [layer.name for layer in viewer.layers]
    assert names.index("cells [one]") == names.index("one") + 1  # just above its image
    assert names.index("classes [one]") == names.index("cells [one]") + 1
    assert widget.layer_combo.currentText() == "cells [one]"

    viewer.layers.selection.active = viewer.layers["two"]
    assert widget.layer_combo.currentText() == "two" and widget.summary.text() == ""
    _classify(widget, qtbot, "two")
    assert viewer.layers["cells [one]"] is one_cells  # left alone
    assert len(viewer.layers["cells [two]"].features) != len(one_cells.features)
    before = viewer.layers["cells [two]"]
    _classify(widget, qtbot, "cells [two]")  # re-run: the same layers, updated
    assert viewer.layers["cells [two]"] is before
    assert sum(layer.name.startswith("classes [two]") for layer in viewer.layers) == 1
    viewer.layers.selection.active = one_cells
    assert widget.summary.text() == one_summary  # a summary per image

    segment = SegmentWidget(viewer)
    viewer.layers.selection.active = viewer.layers["classes [two]"]
    assert segment.image_choice.value is viewer.layers["two"]


def test_cell_table_rows_selection_corrections_and_exports(
    make_napari_viewer, qtbot, bundle_dir, tmp_path
):
    viewer = make_napari_viewer()
    _two_images(viewer)
    classify = ClassifyWidget(viewer)
    classify.set_bundle(bundle_dir)
    _classify(classify, qtbot, "one")
    cells = viewer.layers["cells [one]"]
    table = CellTableWidget(viewer)
    qtbot.addWidget(table)
    frame = cells.features
    assert table.layer is cells and table.table.rowCount() == len(frame)
    assert not table.table.item(0, 0).icon().isNull()  # the crop thumbnail
    headers = [table.table.horizontalHeaderItem(i).text() for i in range(9)]
    assert headers[1:4] == ["cell", "label", "confidence"]

    table.table.sortItems(3, Qt.SortOrder.DescendingOrder)  # by confidence, as numbers
    shown = [float(table.table.item(r, 3).text()) for r in range(table.table.rowCount())]
    assert shown == sorted(shown, reverse=True)

    target = int(frame["index"].iloc[-1])
    table.table.selectRow(table.row_of(target))
    assert cells.selected_label == target  # row -> viewer
    centre = frame[["centroid_row", "centroid_col"]].to_numpy(float)[-1]
    assert np.allclose(viewer.camera.center[-2:], cells.data_to_world(centre)[-2:])
    first = int(frame["index"].iloc[0])
    camera = getattr(viewer, "scene", viewer).camera
    camera.center = (0.0, 3.0, 4.0)  # where the user has moved the view
    cells.selected_label = first  # viewer -> row
    assert table.selected_cell() == first
    assert np.allclose(camera.center[-2:], (3.0, 4.0))  # a click on a cell keeps the view
    refresh_cells_display(viewer, cells)  # napari re-announces the label as colours change
    assert np.allclose(camera.center[-2:], (3.0, 4.0))  # a run or correction keeps it too

    old = str(frame["label"].iloc[0])
    new = "hem" if old == "all" else "all"
    viewer.layers.selection.active = cells
    bound = {str(key): callback for key, callback in viewer.keymap.items()}
    bound[new[0].upper()](viewer)  # the A / H key bound while the table is docked
    frame = cells.features
    assert frame["label"].iloc[0] == new and bool(frame["corrected"].iloc[0])
    assert frame["predicted_label"].iloc[0] == old
    assert np.allclose(cells.get_color(first), CORRECTED_COLOUR)
    assert table.table.item(table.row_of(first), 8).text() == "yes"
    assert "1 corrected" in cells.metadata["allbag_summary"]
    points = viewer.layers["classes [one]"]
    assert points.features["text"][0] == f"{new.upper()} \u2713"

    rows = list(csv.DictReader(table.export_csv(tmp_path / "cells.csv").open()))
    assert len(rows) == len(frame) and rows[0]["corrected"] == "True"
    folder = tmp_path / "annotated"
    assert table.export_annotated(folder) == len(frame)
    annotated = scan_annotated_folder(folder, require_both_classes=False)
    assert len(annotated) == len(frame) and annotated.has_subjects
    assert {item.subject.lower() for item in annotated.items} == {"one"}
    counts = {name: int((frame["label"] == name).sum()) for name in ("all", "hem")}
    assert {name: len(list((folder / name).glob("*.png"))) for name in counts} == counts


def test_flagged_cells_are_distinct_and_subjects_come_from_names():
    import pandas as pd

    frame = pd.DataFrame(
        {"index": [1, 2, 3], "label": ["all", "hem", "all"], "review": ["", "near threshold", ""]}
    )
    colours = cell_colours(frame)
    assert colours[2] == FLAGGED_COLOUR and colours[1] != colours[2] != colours[3]
    assert subject_of("UID_H10_47_2_hem", {}) == "H10"
    assert subject_of("field_a.png", {"subject": "P_7"}) == "P7"
    assert subject_of("field_a.png", {}) == "fielda"


def test_the_table_docks_from_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-allbag", "Cell table")
    assert isinstance(widget, CellTableWidget) and widget.table.rowCount() == 0
