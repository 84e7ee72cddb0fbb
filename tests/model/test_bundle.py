"""bundle: atomic save, exact round trip, and clear refusals (shape, missing file, version, pickle)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_allbag.model import bundle as bundle_module
from napari_allbag.model.bundle import (
    FORMAT_VERSION,
    BundleError,
    load_bundle,
    read_bundle_meta,
    save_bundle,
)
from napari_allbag.model.networks import CombinedModel, Ensemble, Preprocess
from tests.model_factory import make_tiny_bundle, make_tiny_models


def _read(path):
    """Tensors of a safetensors file, copied (load_file maps the file, which tests rewrite)."""
    return {k: v.clone() for k, v in load_file(path).items()}


def _crops(n=4, size=64):
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=5)


@pytest.mark.parametrize("own_backbones", [False, True])
def test_round_trip_gives_identical_outputs(tmp_path, own_backbones):
    model_a, model_b, head, config = make_tiny_models(seed=2, own_backbones=own_backbones)
    meta = {
        "backbone": config,
        "segmentation": {"crop_size": 64},
        "training": {"epochs": 3},
        "metrics": {"weighted_f1": 0.5},
    }
    path = save_bundle(tmp_path / "b", model_a, model_b, head, meta)
    assert sorted(p.name for p in path.iterdir()) == [
        "bundle.json",
        "combined.safetensors",
        "model_a.safetensors",
        "model_b.safetensors",
    ]
    loaded = load_bundle(path, "cpu")
    original = Ensemble(model_a, model_b, head, Preprocess(config)).eval()
    crops = _crops()
    with torch.no_grad():
        assert torch.equal(loaded.ensemble(crops), original(crops))
    meta_read = loaded.meta
    assert meta_read["format_version"] == FORMAT_VERSION
    assert meta_read["backbone"]["num_features"] == model_a.num_features
    assert meta_read["class_names"] == ["hem", "all"]
    assert meta_read["combined_has_own_backbones"] is own_backbones
    assert meta_read["training"] == {"epochs": 3} and meta_read["metrics"] == {"weighted_f1": 0.5}
    assert {"napari_allbag", "torch", "timm"} <= set(meta_read["versions"])
    assert loaded.backbone == config
    assert loaded.crop_size == 64
    assert loaded.ensemble.backbone_passes == (4 if own_backbones else 2)


def test_combined_model_sharing_the_stage1_backbones_stores_the_head_only(tmp_path):
    model_a, model_b, head, config = make_tiny_models()
    combined = CombinedModel(model_a, model_b, head, freeze_backbones=True)
    path = save_bundle(tmp_path / "b", model_a, model_b, combined, {"backbone": config})
    assert read_bundle_meta(path)["combined_has_own_backbones"] is False
    assert all(key.startswith("head.") for key in _read(path / "combined.safetensors"))


def test_save_refuses_to_replace_silently_and_leaves_no_debris(tmp_path, saved):
    target = tmp_path / "bundle"
    make_tiny_bundle(target, seed=1)
    with pytest.raises(BundleError, match="already exists"):
        make_tiny_bundle(target, seed=2)
    first = _read(target / "model_a.safetensors")
    make_tiny_bundle(target, seed=2, overwrite=True)
    second = _read(target / "model_a.safetensors")
    assert not torch.equal(first["head.weight"], second["head.weight"])
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(BundleError, match="not a model bundle"):
        make_tiny_bundle(other, overwrite=True)
    assert (other / "holiday.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "photos"]


def test_a_crash_while_saving_never_leaves_a_half_written_bundle(tmp_path, monkeypatch):
    target = tmp_path / "bundle"
    make_tiny_bundle(target, seed=1)
    before = _read(target / "model_a.safetensors")
    real_write = bundle_module._write_safetensors

    def write_then_crash(tensors, path, meta):
        if path.name == "combined.safetensors":
            raise OSError("disk full")
        real_write(tensors, path, meta)

    monkeypatch.setattr(bundle_module, "_write_safetensors", write_then_crash)
    with pytest.raises(OSError, match="disk full"):
        make_tiny_bundle(target, seed=2, overwrite=True)
    with pytest.raises(OSError):
        make_tiny_bundle(tmp_path / "new", seed=2)
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    after = _read(target / "model_a.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    load_bundle(target)


def _copy(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "copy")


def test_wrong_shape_names_the_tensor_and_both_shapes(saved, tmp_path):
    path = _copy(saved, tmp_path)
    state = _read(path / "model_a.safetensors")
    features = state["head.weight"].shape[1]
    state["head.weight"] = torch.zeros(3, features)
    save_file(state, str(path / "model_a.safetensors"))
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert "model_a.safetensors" in message and "'head.weight'" in message
    assert f"(3, {features})" in message and f"(2, {features})" in message


def test_unexpected_or_missing_tensor_names_are_listed(saved, tmp_path):
    path = _copy(saved, tmp_path)
    state = _read(path / "combined.safetensors")
    state["head.extra"] = torch.zeros(1)
    del state["head.bn_a.weight"]
    save_file(state, str(path / "combined.safetensors"))
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert "combined.safetensors" in message
    assert "'bn_a.weight'" in message and "'extra'" in message


def test_missing_file_is_named(saved, tmp_path):
    path = _copy(saved, tmp_path)
    (path / "combined.safetensors").unlink()
    with pytest.raises(BundleError, match=r"combined\.safetensors is missing"):
        load_bundle(path)
    (path / "bundle.json").unlink()
    with pytest.raises(BundleError, match="not a model bundle: bundle.json is missing"):
        load_bundle(path)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_newer_format_version_asks_for_an_upgrade(saved, tmp_path):
    path = _copy(saved, tmp_path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    assert "newer napari-allbag" in str(caught.value)
    assert "pip install -U napari-allbag" in str(caught.value)


def test_pickles_are_refused_without_being_opened(saved, tmp_path, monkeypatch):
    path = _copy(saved, tmp_path)
    state = _read(path / "model_b.safetensors")
    torch.save(state, path / "model_b.safetensors")  # a zip of pickles under the right name

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    assert "model_b.safetensors" in str(caught.value) and "pickle" in str(caught.value)

    (path / "model_b.safetensors").unlink()
    with open(path / "model_b.pt", "wb") as handle:
        pickle.dump({"head.weight": [1.0]}, handle)
    with pytest.raises(BundleError) as caught:
        load_bundle(path)
    assert "model_b.pt" in str(caught.value) and "never unpickles" in str(caught.value)


def test_damaged_files_are_reported(saved, tmp_path):
    path = _copy(saved, tmp_path)
    data = (path / "model_a.safetensors").read_bytes()
    (path / "model_a.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="model_a.safetensors"):
        load_bundle(path)
    (path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot be read as JSON"):
        load_bundle(path)
