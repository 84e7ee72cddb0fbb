"""check_output_location: outputs never overwrite an input, the bundle, or mix with the data."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from napari_allbag.io.paths import OutputLocationError, check_output_location


@pytest.fixture
def layout(tmp_path):
    """DATA/all/cell.png, DATA/hem/cell.png and a bundle folder."""
    data = tmp_path / "DATA"
    for label in ("all", "hem"):
        (data / label).mkdir(parents=True)
        cv2.imwrite(str(data / label / "cell.png"), np.zeros((8, 8, 3), np.uint8))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    return data, bundle


def test_an_output_that_is_an_input_image_is_refused(layout, tmp_path):
    data, bundle = layout
    image = data / "all" / "cell.png"
    with pytest.raises(OutputLocationError, match="is the input .* itself"):
        check_output_location(image, [image], bundle)
    os.link(image, tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(image)
    for alias in (tmp_path / "hard.png", tmp_path / "soft.png"):
        with pytest.raises(OutputLocationError, match="itself"):
            check_output_location(alias, [image])
    with pytest.raises(OutputLocationError, match="image file inside the input folder"):
        check_output_location(data / "hem" / "new.png", [data])


def test_an_output_inside_the_bundle_is_refused(layout):
    data, bundle = layout
    for out in (bundle / "model_a.safetensors", bundle / "bundle.json", bundle / "x.csv"):
        with pytest.raises(OutputLocationError, match="inside the model bundle") as caught:
            check_output_location(out, [data], bundle / "bundle.json", what="--out")
        assert str(bundle) in str(caught.value) and "--out" in str(caught.value)


def test_a_run_folder_inside_the_data_or_holding_it_is_refused(layout, tmp_path):
    data, _ = layout
    with pytest.raises(OutputLocationError, match="inside the input folder") as caught:
        check_output_location(data / "all" / "run", [data], folder=True)
    assert "curves.png" in str(caught.value) and "DATA-outputs" in str(caught.value)
    with pytest.raises(OutputLocationError, match="input folder .* is inside --out"):
        check_output_location(tmp_path, [data], folder=True)
    with pytest.raises(OutputLocationError, match="input .* is inside --out"):
        check_output_location(tmp_path, [data / "all" / "cell.png"], folder=True)


def test_outputs_beside_the_inputs_are_accepted(layout, tmp_path):
    data, bundle = layout
    check_output_location(tmp_path / "results.csv", [data, data / "all" / "cell.png"], bundle)
    check_output_location(data / "results.csv", [data], bundle)  # a table is never read as data
    check_output_location(tmp_path / "run", [data], folder=True)
    check_output_location(tmp_path / "DATA-run", [data], folder=True)  # a prefix is not inside
