"""training.outputs: the bundle's metadata from a run's report."""

from __future__ import annotations

import json

import numpy as np

from napari_allbag.evaluation.report import REPORT_MODELS, build_report
from napari_allbag.model.networks import resolve_backbone
from napari_allbag.training.config import TrainConfig
from napari_allbag.training.loop import StageOutcome
from napari_allbag.training.outputs import bundle_meta
from napari_allbag.training.prepare import PreparedData


def _run(tmp_path):
    config = TrainConfig(
        data_dir=tmp_path / "cells",
        out_dir=tmp_path / "run",
        backbone="test_resnet",
        crop_size=64,
        segmentation={"erosion_size": 3},
        seed=5,
    )
    rng = np.random.default_rng(0)
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
    data = PreparedData(
        cache=None,
        rows=np.arange(10),
        labels=labels,
        subjects=["1"] * 5 + ["H2"] * 5,
        files=[f"c{i}.bmp" for i in range(10)],
        train=np.arange(6),
        val=np.arange(6, 10),
        split_note="split by subject: test",
    )
    p_all = rng.random((4, 3))
    probs = np.stack([1 - p_all, p_all], axis=-1)
    report = build_report("validation", labels[data.val], probs, context={"split": "s"})
    outcomes = {
        "stage1-A": StageOutcome([], 3, 0.4, True, extra={"last_epoch": 9}),
        "stage2": StageOutcome([], 2, 0.3, False, extra={"last_epoch": 4}),
    }
    return config, data, report, outcomes


def test_bundle_meta_summarises_the_report_and_the_run(tmp_path):
    config, data, report, outcomes = _run(tmp_path)
    backbone = resolve_backbone("test_resnet", 64)
    meta = bundle_meta(config, backbone, data, outcomes, report)
    json.dumps({k: v for k, v in meta.items() if k not in ("backbone", "segmentation")})
    metrics = meta["metrics"]
    assert metrics["ensemble_weighted_f1"] == report["weighted_f1"]["ensemble"]
    assert metrics["validation_cells"] == report["n_cells"] == 4
    assert list(metrics["validation"]) == list(REPORT_MODELS)
    for name, summary in metrics["validation"].items():
        table = report["models"][name]
        assert summary["weighted_f1"] == table["weighted_avg"]["f1"]
        assert summary["accuracy"] == table["accuracy"]
        assert summary["confusion_matrix"] == table["confusion_matrix"]
    training = meta["training"]
    assert training["cells"] == {"train": {"all": 4, "hem": 2}, "val": {"all": 2, "hem": 2}}
    assert training["stages"]["stage1-A"] == {
        "epochs": 9,
        "best_epoch": 3,
        "best_val_loss": 0.4,
        "stopped_early": True,
    }
    assert training["config"]["seed"] == 5 and training["split"] == data.split_note
    # The bundle classifies every cell of an image, with the run's crop settings.
    segmentation = meta["segmentation"]
    assert segmentation.largest_only is False
    assert segmentation.crop_size == 64 and segmentation.erosion_size == 3
    assert meta["backbone"] is backbone
