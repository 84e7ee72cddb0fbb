"""Result-layer helpers in a real viewer: labels hidden while they would pile up on screen."""

from __future__ import annotations

import numpy as np

from napari_allbag.widgets.results import hide_labels_when_crowded, median_spacing


def test_median_spacing_is_the_typical_nearest_neighbour_distance():
    points = np.array([[0, 0], [0, 10], [0, 30], [100, 100]], float)
    assert median_spacing(points) == 15.0  # nearest: 10, 10, 20, ~94 -> median 15
    assert median_spacing(points[:1]) == float("inf")


def _grid_of_points(viewer, step: float, scale=(1.0, 1.0)):
    rows, cols = np.mgrid[0:10, 0:10] * step
    points = np.column_stack([rows.ravel(), cols.ravel()]).astype(float)
    texts = ["HEM 0.61 ?"] * len(points)
    layer = viewer.add_points(points, features={"t": texts}, text="{t}", scale=scale)
    return layer, texts


def test_labels_show_only_where_they_fit_and_follow_the_zoom(make_napari_viewer):
    # a docked plugin gets a proxied viewer (its layers too): the real path
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-allbag", "Classify cells")
    layer, texts = _grid_of_points(widget.viewer, step=20.0)
    camera = getattr(viewer, "scene", viewer).camera
    followers = len(camera.events.zoom.callbacks)
    camera.zoom = 1.0  # 20 screen px between labels 72 px wide
    hide_labels_when_crowded(widget.viewer, layer, texts, font_size=12)
    assert not layer.text.visible
    camera.zoom = 4.0  # 80 px apart
    assert layer.text.visible
    camera.zoom = 2.0
    assert not layer.text.visible
    layer.text.visible = True  # the user wants the labels anyway
    camera.zoom = 1.5
    assert layer.text.visible
    layer.text.visible = False  # and back: the zoom decides again
    camera.zoom = 4.0
    assert layer.text.visible
    assert len(camera.events.zoom.callbacks) == followers + 1
    widget.viewer.layers.remove(layer)  # no longer followed (nor kept alive by the camera)
    assert len(camera.events.zoom.callbacks) == followers
    camera.zoom = 5.0


def test_world_scale_counts_and_a_lone_cell_always_shows(make_napari_viewer):
    viewer = make_napari_viewer()
    camera = getattr(viewer, "scene", viewer).camera
    layer, texts = _grid_of_points(viewer, step=20.0, scale=(4.0, 4.0))  # 80 world units apart
    camera.zoom = 1.0
    hide_labels_when_crowded(viewer, layer, texts, font_size=12)
    assert layer.text.visible
    lone = viewer.add_points([[5.0, 5.0]], features={"t": ["ALL 0.9"]}, text="{t}")
    camera.zoom = 0.01
    hide_labels_when_crowded(viewer, lone, ["ALL 0.9"], font_size=12)
    assert lone.text.visible and not layer.text.visible
