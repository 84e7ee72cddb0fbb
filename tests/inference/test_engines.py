"""Inference engines: each installed engine agrees with PyTorch; auto, names and the export cache."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from napari_allbag.inference import engines
from napari_allbag.inference.classify import classify_crops
from napari_allbag.model.bundle import LoadedBundle
from napari_allbag.model.networks import Ensemble, Preprocess, decide
from napari_allbag.progress import drive
from tests.faults import refuse_writes
from tests.model_factory import make_tiny_models

SIZE = 64
OPTIONAL = [name for name in engines.ENGINE_MODULES if name not in engines.APPROXIMATE]


def _installed_or_skip(name: str) -> None:
    if not engines.engine_installed(name):
        pytest.skip(f"{name} is not installed (extra {engines.ENGINE_EXTRAS[name]!r})")


def _crops(count: int, seed: int = 0) -> np.ndarray:
    """Dark backgrounds with a bright disc of varying size and colour: varied predictions."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    crops = rng.integers(0, 30, (count, SIZE, SIZE, 3)).astype(np.uint8)
    for index in range(count):
        radius = rng.uniform(8, 30)
        disc = (rows - SIZE / 2) ** 2 + (cols - SIZE / 2) ** 2 < radius**2
        crops[index][disc] = rng.integers(60, 255, 3)
    return crops


@pytest.fixture(scope="module")
def ensemble() -> Ensemble:
    """resnet10t at 64 px, random weights, heads scaled and centred so both labels occur."""
    model_a, model_b, head, config = make_tiny_models(seed=3, backbone="resnet10t", img_size=SIZE)
    model = Ensemble(model_a, model_b, head, Preprocess(config)).eval()
    with torch.no_grad():
        logits = model.forward_logits(torch.from_numpy(_crops(11)))
        heads = (model.model_a.head, model.model_b.head, model.head.mlp[-1])
        for index, linear in enumerate(heads):
            margin = logits[:, index, 1] - logits[:, index, 0]
            scale = 2.0 / float(margin.std().clamp_min(1e-6))
            linear.weight.mul_(scale)
            linear.bias.mul_(scale)
            linear.bias[1] -= float(margin.median()) * scale
    return model.to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def reference(ensemble) -> np.ndarray:
    with torch.inference_mode():
        return ensemble(torch.from_numpy(_crops(11))).numpy()


def test_the_reference_predictions_vary(reference):
    labels = decide(reference)[0]
    assert 0 < labels.sum() < len(labels), "both labels should occur, or agreement means little"


@pytest.mark.parametrize("name", OPTIONAL)
def test_each_installed_engine_agrees_with_torch(name, ensemble, reference, tmp_path):
    _installed_or_skip(name)
    engine = engines.make_engine(name, ensemble, "cpu", batch_size=4, bundle_dir=tmp_path)
    assert engine.name == name
    probs = engine.run(_crops(11))  # 4 + 4 + 3: a partial last batch
    assert probs.shape == (11, 3, 2) and probs.dtype == np.float32
    assert np.abs(probs - reference).max() < 1e-3
    np.testing.assert_array_equal(decide(probs)[0], decide(reference)[0])


def test_torch_engine_matches_the_ensemble(ensemble, reference):
    engine = engines.make_engine("torch", ensemble, "cpu", batch_size=4)
    assert engine.name == "torch"
    np.testing.assert_allclose(engine.run(_crops(11)), reference, atol=1e-5)


@pytest.mark.parametrize("name", OPTIONAL)
def test_export_is_cached_beside_the_bundle(name, ensemble, tmp_path, monkeypatch):
    _installed_or_skip(name)
    engines.make_engine(name, ensemble, "cpu", batch_size=2, bundle_dir=tmp_path)
    exported = list((tmp_path / engines.EXPORT_FOLDER).glob("*.onnx"))
    assert len(exported) == 1
    assert not [p for p in exported[0].parent.iterdir() if p.suffix == ".tmp"]

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been used")

    monkeypatch.setattr(engines, "_onnx_bytes", no_export)
    engine = engines.make_engine(name, ensemble, "cpu", batch_size=2, bundle_dir=tmp_path)
    assert engine.run(_crops(2)).shape == (2, 3, 2)


def test_the_export_key_follows_the_weights_and_the_crop_size(ensemble):
    key = engines.weights_key(ensemble, SIZE)
    assert key == engines.weights_key(ensemble, SIZE)
    assert key != engines.weights_key(ensemble, SIZE + 1)
    other_a, other_b, other_head, config = make_tiny_models(seed=4, backbone="resnet10t")
    other = Ensemble(other_a, other_b, other_head, Preprocess(config))
    assert key != engines.weights_key(other, SIZE)


def test_export_goes_to_the_user_cache_when_the_bundle_folder_cannot_be_written(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("NAPARI_ALLBAG_CACHE_DIR", str(tmp_path / "cache"))
    blocker = tmp_path / "bundle"
    blocker.write_text("a file where the bundle's .engines folder would go")
    assert engines.export_folder(blocker) == tmp_path / "cache" / "engines"
    assert engines.export_folder(tmp_path) == tmp_path / engines.EXPORT_FOLDER


def test_an_export_that_cannot_be_cached_is_used_for_this_run_only(ensemble, tmp_path, monkeypatch):
    refuse_writes(monkeypatch)  # the cache folder exists but every write fails (read-only, full)
    with pytest.warns(RuntimeWarning, match="could not cache the ONNX export"):
        path = engines.export_onnx(ensemble, SIZE, tmp_path)
    assert path.is_file() and path.parent != tmp_path and path.stat().st_size > 0
    assert list(tmp_path.iterdir()) == []  # nothing half-written in the cache folder


def _without_fast_cpu(monkeypatch) -> None:
    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name in engines.ENGINE_MODULES.values():
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(engines.importlib, "import_module", fake_import)


def test_auto_falls_back_to_torch_without_the_extra(ensemble, monkeypatch):
    _without_fast_cpu(monkeypatch)
    assert engines.installed_engines() == ["torch"]
    assert engines.resolve_engine("auto", "cpu") == "torch"
    assert engines.make_engine("auto", ensemble, "cpu", batch_size=4).name == "torch"
    with pytest.raises(engines.EngineError, match=r"napari-allbag\[fast-cpu\]"):
        engines.resolve_engine("onnxruntime", "cpu")
    with pytest.raises(engines.EngineError, match=r"napari-allbag\[openvino\]"):
        engines.resolve_engine("openvino", "cpu")


def test_auto_takes_the_fastest_installed_on_cpu_and_torch_on_a_gpu(monkeypatch):
    monkeypatch.setattr(engines, "engine_installed", lambda name: name != engines.AUTO_ORDER[0])
    assert engines.resolve_engine("auto", "cpu") == engines.AUTO_ORDER[1]
    monkeypatch.setattr(engines, "engine_installed", lambda name: True)
    assert engines.resolve_engine(None, "cpu") == engines.AUTO_ORDER[0]
    assert engines.resolve_engine("auto", "cuda") == "torch"
    with pytest.raises(engines.EngineError, match="CPU only"):
        engines.resolve_engine("openvino", "cuda")


def test_an_unknown_engine_name_is_refused_with_the_choices(ensemble):
    with pytest.raises(engines.EngineError, match="Unknown engine 'tensorrt'") as caught:
        engines.make_engine("tensorrt", ensemble, "cpu")
    assert all(name in str(caught.value) for name in engines.ENGINES)


@pytest.mark.parametrize("name", OPTIONAL)
def test_classify_crops_with_an_engine_gives_the_torch_labels(name, ensemble, tmp_path):
    _installed_or_skip(name)
    bundle = LoadedBundle(ensemble, {}, ensemble.preprocess.config, {"crop_size": SIZE}, tmp_path)
    crops = _crops(9, seed=1)
    expected = drive(classify_crops(bundle, crops, batch_size=4))
    found = drive(classify_crops(bundle, crops, batch_size=4, engine=name))
    assert np.abs(found.probs - expected.probs).max() < 1e-3
    np.testing.assert_array_equal(found.labels, expected.labels)
    small = np.ascontiguousarray(_crops(3)[:, :32, :32])  # resized by torch, not in the graph
    with pytest.raises(engines.EngineError, match="backbone's size"):
        drive(classify_crops(bundle, small, engine=name))
    auto = drive(classify_crops(bundle, small, engine="auto"))
    np.testing.assert_allclose(auto.probs, drive(classify_crops(bundle, small)).probs, atol=1e-6)


@pytest.mark.parametrize("name", OPTIONAL)
def test_an_engine_refuses_crops_of_another_size_than_exported(name, ensemble, tmp_path):
    _installed_or_skip(name)
    engine = engines.make_engine(name, ensemble, "cpu", batch_size=4, bundle_dir=tmp_path)
    with pytest.raises(engines.EngineError, match="exported for 64 px"):
        engine.run(np.zeros((2, 32, 32, 3), np.uint8))


def _predict(bundle_dir, image, out, *extra):
    from napari_allbag.cli.main import main

    args = ["predict", str(bundle_dir), str(image), "--out", str(out), "--device", "cpu"]
    return main([*args, "--workers", "1", "--quiet", *extra])


def _labels(path):
    import csv

    with open(path, newline="") as handle:
        return [row["label"] for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def field_and_bundle(tmp_path_factory):
    import cv2

    from napari_allbag.data.synthetic import make_field
    from tests.model_factory import make_tiny_bundle

    folder = tmp_path_factory.mktemp("predict")
    image, _ = make_field(seed=2, n_cells=4, shape=(320, 320))
    cv2.imwrite(str(folder / "field.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder / "field.png", make_tiny_bundle(folder / "bundle", seed=5)


def test_predict_refuses_an_unknown_engine_before_working(field_and_bundle, tmp_path, capsys):
    image, bundle_dir = field_and_bundle
    assert _predict(bundle_dir, image, tmp_path / "out.csv", "--engine", "tensorrt") == 2
    assert "Unknown engine 'tensorrt'" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("name", OPTIONAL)
def test_predict_with_an_engine_writes_the_torch_labels(name, field_and_bundle, tmp_path):
    _installed_or_skip(name)
    image, bundle_dir = field_and_bundle
    assert _predict(bundle_dir, image, tmp_path / "torch.csv", "--engine", "torch") == 0
    assert _predict(bundle_dir, image, tmp_path / "other.csv", "--engine", name) == 0
    assert _labels(tmp_path / "other.csv") == _labels(tmp_path / "torch.csv")
    assert list((bundle_dir / engines.EXPORT_FOLDER).glob("*.onnx"))


def test_pipeline_options_default_to_torch_and_carry_the_engine(ensemble, tmp_path):
    from napari_allbag.inference.pipeline import PipelineOptions, classify_cells, make_runner

    bundle = LoadedBundle(ensemble, {}, ensemble.preprocess.config, {"crop_size": SIZE}, tmp_path)
    assert PipelineOptions().engine == "torch"
    assert type(make_runner(bundle, PipelineOptions())).__name__ == "EnsembleRunner"
    with pytest.raises(engines.EngineError, match="Unknown engine"):
        make_runner(bundle, PipelineOptions(engine="tensorrt"))
    for name in [n for n in OPTIONAL if engines.engine_installed(n)]:
        options = PipelineOptions(batch_size=4, engine=name)
        assert make_runner(bundle, options).name == name
        found = drive(classify_cells(bundle, _crops(5), options))
        expected = drive(classify_cells(bundle, _crops(5), PipelineOptions(batch_size=4)))
        np.testing.assert_array_equal(found.labels, expected.labels)


def test_evaluate_refuses_an_unknown_engine_before_working(field_and_bundle, tmp_path, capsys):
    from napari_allbag.cli.main import main
    from napari_allbag.data.synthetic import write_annotated_folder

    _, bundle_dir = field_and_bundle
    write_annotated_folder(tmp_path / "set", n_all=1, n_hem=1, n_subjects=1, seed=0, size=120)
    args = ["evaluate", str(bundle_dir), str(tmp_path / "set"), "--engine", "tensorrt", "--quiet"]
    assert main(args) == 2
    assert "Unknown engine 'tensorrt'" in capsys.readouterr().err


def test_openvino_bf16_is_close_to_torch_where_the_cpu_has_bf16_and_refused_where_not(
    ensemble, reference, tmp_path, monkeypatch
):
    _installed_or_skip("openvino-bf16")
    assert "openvino-bf16" not in engines.AUTO_ORDER  # approximate: never picked for the user
    crops = _crops(11)
    import openvino

    if engines.cpu_has_bf16(openvino.Core()):
        engine = engines.make_engine("openvino-bf16", ensemble, "cpu", 4, bundle_dir=tmp_path)
        assert engine.name == "openvino-bf16" and " bf16, " in engine.description
        found = engine.run(crops)
        assert 0 < np.abs(found - reference).max() < 0.1  # bf16 rounding, not another model
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda core: False)
    with pytest.raises(engines.EngineError, match="no bf16|has none") as refused:
        engines.make_engine("openvino-bf16", ensemble, "cpu", 4, bundle_dir=tmp_path)
    assert "--engine openvino" in str(refused.value)
