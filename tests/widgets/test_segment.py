"""The Segment cells widget in a real viewer: run, layers, rerun, empty and bad input, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.segmentation.dark import TABLE_COLUMNS
from napari_allbag.widgets.segment import CELLS_LAYER, CROPS_LAYER, SegmentWidget  # noqa: F401
from tests.drawn_cells import FIELD_CELLS, field


@pytest.fixture
def warnings_shown(monkeypatch) -> list[str]:
    shown: list[str] = []
    monkeypatch.setattr(
        "napari_allbag.widgets.segment.show_warning", lambda message: shown.append(message)
    )
    return shown


def run_and_wait(widget: SegmentWidget, qtbot) -> None:
    widget.run_button.clicked()
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=20000)


def layers_named(viewer, name: str) -> list:
    return [layer for layer in viewer.layers if layer.name.startswith(name)]


def test_run_adds_cells_and_crops_then_updates_them(make_napari_viewer, qtbot, warnings_shown):
    viewer = make_napari_viewer()
    viewer.add_image(field(), name="field", rgb=True)
    widget = SegmentWidget(viewer)
    widget.crop_size.value = 64
    run_and_wait(widget, qtbot)

    assert warnings_shown == []
    cells = viewer.layers["cells [field]"]
    crops = viewer.layers["cell crops [field]"]
    assert cells.data.shape == field().shape[:2]
    assert cells.data.max() == len(FIELD_CELLS)
    assert set(TABLE_COLUMNS) <= set(cells.features.columns)
    assert list(cells.features["index"]) == list(range(1, len(FIELD_CELLS) + 1))
    assert crops.rgb and crops.data.shape == (len(FIELD_CELLS), 64, 64, 3)
    assert crops.translate[-1] > field().shape[1]  # beside the image, not over it
    assert f"{len(FIELD_CELLS)} cell(s)" in widget.status.value

    widget.crop_size.value = 32
    widget.largest_only.value = True
    run_and_wait(widget, qtbot)
    assert layers_named(viewer, CELLS_LAYER) == [cells]
    assert layers_named(viewer, CROPS_LAYER) == [crops]
    assert cells.data.max() == 1 and len(cells.features) == 1
    assert crops.data.shape == (1, 32, 32, 3)
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_empty_image_warns_and_clears_old_results(make_napari_viewer, qtbot, warnings_shown):
    viewer = make_napari_viewer()
    viewer.add_image(field(), name="field", rgb=True)
    viewer.add_image(np.zeros((80, 90), np.uint16), name="dark")
    widget = SegmentWidget(viewer)
    widget.image_choice.value = viewer.layers["field"]
    run_and_wait(widget, qtbot)
    widget.image_choice.value = viewer.layers["dark"]
    run_and_wait(widget, qtbot)

    assert len(warnings_shown) == 1 and "no cell found" in warnings_shown[0]
    assert viewer.layers["cells [field]"].data.any()  # another image's results: left alone
    assert "cells [dark]" not in viewer.layers and "cell crops [dark]" not in viewer.layers
    assert "no cell found" in widget.status.value


def test_no_image_and_unusable_data_warn_without_crashing(
    make_napari_viewer, qtbot, warnings_shown
):
    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    widget.run_button.clicked()
    assert widget.worker is None
    assert "open an image first" in warnings_shown[-1]

    viewer.add_image(np.full((30, 40), np.nan, np.float32), name="all nan")
    widget.image_choice.value = viewer.layers["all nan"]
    run_and_wait(widget, qtbot)
    assert "no cell found" in warnings_shown[-1]  # NaN reads as black, not as an error
    assert len(warnings_shown) == 2


def test_the_plane_shown_of_a_stack_is_segmented(make_napari_viewer, qtbot, warnings_shown):
    viewer = make_napari_viewer()
    stack = np.zeros((3, *field().shape[:2]), np.uint8)
    stack[1] = field()[..., 1]
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    widget = SegmentWidget(viewer)
    run_and_wait(widget, qtbot)
    assert warnings_shown == []
    assert viewer.layers["cells [stack]"].data.max() == len(FIELD_CELLS)


def test_cancel_stops_the_worker_and_resets_the_buttons(make_napari_viewer, qtbot, warnings_shown):
    viewer = make_napari_viewer()
    big = np.tile(field(), (12, 12, 1))  # ~1 s of work, cancelled within microseconds
    viewer.add_image(big, name="big", rgb=True)
    widget = SegmentWidget(viewer)
    widget.run_button.clicked()
    widget.cancel_button.clicked()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=20000)
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget.status.value == "cancelled"
    assert CELLS_LAYER not in viewer.layers and CROPS_LAYER not in viewer.layers


def test_a_failure_in_the_worker_becomes_a_warning(
    make_napari_viewer, qtbot, warnings_shown, monkeypatch
):
    def out_of_memory(data, params, source):
        yield from ()
        raise MemoryError("cannot allocate the label image")

    monkeypatch.setattr("napari_allbag.widgets.segment.segment_layer_data", out_of_memory)
    viewer = make_napari_viewer()
    viewer.add_image(field(), name="field", rgb=True)
    widget = SegmentWidget(viewer)
    run_and_wait(widget, qtbot)
    assert "cannot allocate" in warnings_shown[-1]
    assert widget.status.value.startswith("failed") and widget.run_button.enabled
