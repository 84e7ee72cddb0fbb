"""The npe2 manifest: valid, shipped inside the package, and every contribution resolves."""

from __future__ import annotations

import importlib
from importlib.resources import files

import pytest
from npe2 import PluginManifest

EXPECTED_WIDGETS = {"Segment cells", "Classify cells", "Train ensemble", "Cell table"}
EXPECTED_SAMPLES = {"single_cell", "field", "annotated_set"}


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution("napari-allbag")


def test_manifest_is_inside_the_package_and_valid(manifest):
    packaged = files("napari_allbag") / "napari.yaml"
    assert packaged.is_file()
    assert PluginManifest.from_file(str(packaged)).name == manifest.name == "napari-allbag"
    PluginManifest.validate(
        manifest.model_dump() if hasattr(manifest, "model_dump") else manifest.dict()
    )


def test_every_command_resolves_to_a_callable(manifest):
    for command in manifest.contributions.commands:
        module_name, _, attribute = command.python_name.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        assert callable(target), command.id


def test_widgets_and_samples_are_offered(manifest):
    assert {w.display_name for w in manifest.contributions.widgets} == EXPECTED_WIDGETS
    assert {s.key for s in manifest.contributions.sample_data} == EXPECTED_SAMPLES


def test_widgets_dock_from_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in sorted(EXPECTED_WIDGETS):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-allbag", name)
        assert widget is not None and dock is not None
