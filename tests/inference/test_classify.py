"""inference.classify: batched classification of crops; the engine imports no image or GUI library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_allbag.defaults import PREDICTION_COLUMNS
from napari_allbag.inference.classify import CellPredictions, classify_crops
from napari_allbag.model.networks import decide
from napari_allbag.progress import drive
from tests.model_factory import direct_probs, random_crops


def test_classify_crops_batches_and_matches_the_ensemble(bundle):
    crops = random_crops(11)
    events = []
    result = drive(classify_crops(bundle, crops, batch_size=4), events.append)
    expected = direct_probs(bundle, crops)
    assert np.allclose(result.probs, expected, atol=1e-5)
    labels, confidence = decide(expected)
    assert result.labels.tolist() == labels.tolist()
    assert np.allclose(result.confidence, confidence, atol=1e-5)
    assert [e.done for e in events] == [0, 4, 8, 11]
    assert all(e.total == 11 for e in events)
    columns = result.columns()
    assert tuple(columns) == PREDICTION_COLUMNS
    assert np.allclose(columns["p_all_combined"], expected[:, 2, 1], atol=1e-5)
    assert set(columns["label"]) <= {"all", "hem"}
    assert result.n_all == int((result.labels == 1).sum())


def test_classify_crops_edge_cases(bundle):
    assert len(drive(classify_crops(bundle, random_crops(0)))) == 0
    with pytest.raises(ValueError, match="uint8"):
        drive(classify_crops(bundle, random_crops(2).astype(np.float32)))
    with pytest.raises(ValueError, match="RGB"):
        drive(classify_crops(bundle, np.zeros((2, 64, 64), np.uint8)))
    one = drive(classify_crops(bundle, random_crops(1), batch_size=7))
    assert one.probs.shape == (1, 3, 2)


def test_cell_predictions_from_probs():
    probs = np.array([[[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], [[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]]])
    predictions = CellPredictions.from_probs(probs)
    assert predictions.label_names.tolist() == ["all", "hem"]
    assert np.allclose(predictions.p_all, [[0.8, 0.4, 0.5], [0.1, 0.4, 0.5]])
    assert predictions.n_all == 1


def test_engine_and_models_import_no_image_or_gui_libraries():
    """benchmarks/gpu_bench.py runs on machines with torch and timm only."""
    import subprocess
    import sys

    code = (
        "import sys, napari_allbag.inference.classify, napari_allbag.inference.predict, "
        "napari_allbag.model.networks; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'cv2', 'skimage', 'napari', 'qtpy'}))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "[]"


def test_gpu_bench_smoke_runs_here(tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"
    spec = importlib.util.spec_from_file_location("gpu_bench_under_test", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script adds src/ and benchmarks/
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    module.main(["--smoke", "--no-compile", "--sections", "predict", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = report["sections"]["predict"]["rows"]
    assert not [row for row in rows if "error" in row]
    assert all(row["cells_per_s"] > 0 for row in rows)
    assert {row["precision"] for row in rows} == {"fp32", "bf16"}
