"""The sample-data menu: LayerData tuples from the shipped files, generated fallbacks, a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_allbag.data import samples as sample_layers
from napari_allbag.data import synthetic


@pytest.fixture
def demo_set_dir(tmp_path, monkeypatch):
    """Keep the demo annotated set out of the system temp folder during tests."""
    folder = tmp_path / "demo-set"
    monkeypatch.setattr(sample_layers, "default_annotated_set_dir", lambda: folder)
    return folder


def _check_rgb_layers(layers, shape=None):
    assert isinstance(layers, list) and layers
    for data, kwargs, layer_type in layers:
        assert layer_type == "image"
        assert kwargs["rgb"] is True and kwargs["name"]
        assert isinstance(kwargs["metadata"], dict)
        assert data.dtype == np.uint8 and data.ndim == 3 and data.shape[2] == 3
        if shape is not None:
            assert data.shape == shape


def test_single_cell_is_the_shipped_all_cell():
    layers = sample_layers.single_cell()
    _check_rgb_layers(layers, (450, 450, 3))
    data, kwargs, _ = layers[0]
    assert kwargs["metadata"]["label"] == "all"
    name, label, seed = synthetic.SAMPLE_ALL_CELL
    generated = synthetic.make_cell(label, seed)
    assert np.abs(data.astype(int) - generated).mean() < 0.5


def test_samples_are_generated_where_the_files_are_missing(monkeypatch):
    monkeypatch.setattr(sample_layers, "_read_shipped", lambda name: None)
    ((cell, cell_kwargs, _),) = sample_layers.single_cell()
    assert cell_kwargs["metadata"]["source"].startswith("generated")
    name, label, seed = synthetic.SAMPLE_ALL_CELL
    assert np.array_equal(cell, synthetic.make_cell(label, seed))
    ((field, field_kwargs, _),) = sample_layers.field_of_cells()
    assert field_kwargs["metadata"]["source"].startswith("generated")
    assert field.shape == (*synthetic.SAMPLE_FIELD_KWARGS["shape"], 3)


def test_field_metadata_gives_each_cell_class_and_centre():
    layers = sample_layers.field_of_cells()
    _check_rgb_layers(layers)
    data, kwargs, _ = layers[0]
    cells = kwargs["metadata"]["cells"]
    assert len(cells) == synthetic.SAMPLE_FIELD_KWARGS["n_cells"]
    assert {c["label"] for c in cells} == {"all", "hem"}
    for cell in cells:
        row, col = (round(v) for v in cell["center"])
        assert data[row, col].max() > 12  # the centre lies on a stained cell, not background


def test_annotated_set_layers_carry_class_subject_and_file(demo_set_dir):
    layers = sample_layers.annotated_set()
    _check_rgb_layers(layers, (450, 450, 3))
    labels = [kwargs["metadata"]["label"] for _, kwargs, _ in layers]
    assert labels.count("all") == labels.count("hem") == sample_layers.ANNOTATED_SET_PER_CLASS
    for _, kwargs, _ in layers:
        meta = kwargs["metadata"]
        match = synthetic.CNMC_NAME.match(meta["path"].rsplit("/", 1)[-1])
        assert match and match["label"] == meta["label"] and match["subject"] == meta["subject"]
        assert meta["annotated_folder"] == str(demo_set_dir)
        assert kwargs["name"].startswith(meta["label"].upper())
    # The folder is really there for the Train widget, with the same images.
    assert len(list(demo_set_dir.glob("*/*.bmp"))) == len(layers)
    offsets = {tuple(kwargs["translate"]) for _, kwargs, _ in layers}
    assert len(offsets) == len(layers)  # tiled, not stacked on top of each other


def test_every_sample_opens_in_a_viewer(make_napari_viewer, demo_set_dir):
    viewer = make_napari_viewer()
    for key, expected in (("single_cell", 1), ("field", 1), ("annotated_set", 12)):
        before = len(viewer.layers)
        viewer.open_sample("napari-allbag", key)
        added = list(viewer.layers)[before:]
        assert len(added) == expected, key
        assert all(layer.rgb and layer.data.shape[-1] == 3 for layer in added)
    assert viewer.layers[-1].metadata["label"] in {"all", "hem"}
