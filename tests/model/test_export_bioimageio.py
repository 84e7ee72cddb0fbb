"""`napari-allbag export --format bioimageio`: the package validates and reproduces the plugin.

The graph is checked against the bundle's own ensemble with torch alone; the package against the
official validator (bioimageio.spec) and, where bioimageio.core is installed, by running its test
tensor through every weights format. Both are optional extras: those tests skip without them.
Nothing is downloaded (the validator only reads the local package; its cache goes to tmp).
"""

from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
import torch

from napari_allbag.cli.main import main
from napari_allbag.model.bundle import load_bundle
from napari_allbag.model.export_bioimageio import (
    DATA,
    PAPER,
    ExportError,
    ExportGraph,
    ExportSettings,
    sample_crops,
    trace_graph,
)
from napari_allbag.model.networks import decide
from tests.model_factory import make_tiny_bundle

SIZE = 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("export") / "bundle", seed=3, img_size=SIZE)


@pytest.fixture(scope="module")
def package(bundle, tmp_path_factory):
    """The bundle exported through the CLI with both weights formats (skips without the spec)."""
    pytest.importorskip("bioimageio.spec")
    out = tmp_path_factory.mktemp("package") / "model.zip"
    args = ["export", str(bundle), "--out", str(out), "--weights", "torchscript,onnx"]
    assert main([*args, "--author", "Test Author", "--quiet"]) == 0
    return out


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio-cache"))


def test_traced_graph_gives_the_plugins_probabilities(bundle, tmp_path):
    loaded = load_bundle(bundle)
    crops = sample_crops(loaded.segmentation, SIZE)
    assert crops.shape == (2, 3, SIZE, SIZE) and crops.dtype == np.uint8 and crops.max() > 0
    traced = trace_graph(ExportGraph(loaded.ensemble), crops, tmp_path / "g.pt")
    reloaded = torch.jit.load(str(tmp_path / "g.pt"))
    with torch.no_grad():
        plugin = loaded.ensemble(torch.from_numpy(crops).permute(0, 2, 3, 1).contiguous())
        for graph in (traced, reloaded):
            out = graph(torch.from_numpy(crops))
            assert out.shape == (2, 3, 2)
            torch.testing.assert_close(out, plugin, rtol=1e-5, atol=1e-6)
            single = graph(torch.from_numpy(crops[1:]))  # another batch size than traced
            torch.testing.assert_close(single, plugin[1:], rtol=1e-5, atol=1e-6)
    assert torch.equal(decide(out)[0], decide(plugin)[0])


def test_package_passes_the_official_validator(package):
    from bioimageio.spec import load_description

    description = load_description(package, perform_io_checks=True)
    summary = description.validation_summary
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status in ("valid-format", "passed"), summary.format()
    assert not failed, summary.format()
    assert description.format_version.startswith("0.5")
    assert {c.doi for c in description.cite} == {PAPER["doi"], DATA["doi"]}
    assert [str(a.id) for a in description.inputs[0].axes][1:] == ["channel", "y", "x"]
    assert [str(a.id) for a in description.outputs[0].axes][1:] == ["model", "channel"]
    assert set(description.weights.model_dump(exclude_none=True)) == {"torchscript", "onnx"}


def test_package_runs_its_test_tensor(package):
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(package, devices=["cpu"])
    assert summary.status == "passed", summary.format()
    ran = [d.name for d in summary.details if d.name.startswith("Reproduce test outputs")]
    assert len(ran) == 2, ran  # torchscript and onnx


def test_package_files_agree_with_the_bundle(package, bundle, tmp_path):
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    readme = (tmp_path / "README.md").read_text()
    for expected in ("Otsu", PAPER["doi"], DATA["doi"], "# Validation", "napari-allbag model card"):
        assert expected in readme, expected
    crops = np.load(tmp_path / "test_input.npy")
    expected = np.load(tmp_path / "test_output.npy")
    loaded = load_bundle(bundle)
    with torch.no_grad():
        plugin = loaded.ensemble(torch.from_numpy(crops).permute(0, 2, 3, 1).contiguous())
        scripted = torch.jit.load(str(tmp_path / "ensemble.torchscript.pt"))(
            torch.from_numpy(crops)
        )
    np.testing.assert_allclose(expected, plugin.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected, scripted.numpy(), rtol=1e-5, atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "ensemble.onnx"))
    (onnx_out,) = session.run(None, {"crop": crops})
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-5)


def test_export_without_the_extra_says_how_to_install(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import fails as if absent
    assert main(["export", str(bundle), "--out", str(tmp_path / "m.zip"), "--quiet"]) == 2
    assert "pip install 'napari-allbag[bioimageio]'" in capsys.readouterr().err
    assert not (tmp_path / "m.zip").exists()


def test_bad_requests_are_refused(bundle, tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    (tmp_path / "taken.zip").write_bytes(b"x")
    for out, message in (("m.tar", ".zip"), ("taken.zip", "--overwrite")):
        assert main(["export", str(bundle), "--out", str(tmp_path / out), "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "taken.zip").read_bytes() == b"x"
    with pytest.raises(ExportError, match="unknown"):
        ExportSettings(out=tmp_path / "m.zip", weight_formats=("keras",))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work folder left
