"""The two-stage bagging training on generated C-NMC-like cells, with a tiny backbone on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.model.bundle import load_bundle
from napari_allbag.progress import drive
from napari_allbag.segmentation.crop_cache import build_crop_cache
from napari_allbag.training.batches import CropFeeder, batch_positions
from napari_allbag.training.config import TrainConfig, TrainingError, load_run_config
from napari_allbag.training.curves import read_log
from napari_allbag.training.loop import EpochRandom
from napari_allbag.training.run import STAGES, segmentation_params, train

N_ALL, N_HEM = 130, 70
EPOCHS = 8


@pytest.fixture(scope="module")
def annotated_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("annotated")
    write_annotated_folder(root, n_all=N_ALL, n_hem=N_HEM, n_subjects=3, seed=0, size=128)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("crop_cache")


def tiny_config(data_dir: Path, out_dir: Path, cache_dir: Path, **changes) -> TrainConfig:
    """The paper's method with a tiny backbone at 64 px; only the scale is changed for CI."""
    values = dict(
        data_dir=data_dir,
        out_dir=out_dir,
        backbone="test_resnet",
        img_size=64,
        pretrained=False,
        epochs=EPOCHS,
        batch_size=32,
        crop_size=64,
        cache_dir=cache_dir,
        workers=0,
        device="cpu",
        seed=0,
    )
    values.update(changes)
    return TrainConfig(**values)


def bundle_tensors(bundle_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for name in ("model_a", "model_b", "combined"):
        for key, value in load_file(str(bundle_dir / f"{name}.safetensors")).items():
            tensors[f"{name}/{key}"] = value
    return tensors


@pytest.fixture(scope="module")
def trained(annotated_dir, cache_dir, tmp_path_factory):
    """One full run shared by the tests below: (config, result, events)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    config = tiny_config(annotated_dir, out, cache_dir)
    events = []
    result = drive(train(config), events.append)
    return config, result, events


def test_full_training_reaches_the_target_and_writes_every_output(trained):
    config, result, _ = trained
    f1 = result.report["weighted_f1"]
    assert f1["ensemble"] >= 0.9, result.report_text
    assert f1["combined"] >= 0.9, result.report_text
    run = config.out_dir
    for name in (
        "config.json",
        "summary.json",
        "summary.txt",
        "log.csv",
        "curves.png",
        "report.txt",
        "report.json",
        "bundle/bundle.json",
    ):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "weighted avg" in (run / "report.txt").read_text()
    report = json.loads((run / "report.json").read_text())
    assert set(report["models"]) == {"model-A", "model-B", "combined", "ensemble"}
    matrix = np.array(report["models"]["ensemble"]["confusion_matrix"])
    assert matrix.sum() == report["n_cells"] == len(report["cells"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["per_class"] == {"hem": N_HEM, "all": N_ALL}
    assert summary["split"]["by_subject"]
    assert not set(summary["split"]["train_subjects"]) & set(summary["split"]["val_subjects"])


def test_events_walk_through_the_stages_and_the_log_matches(trained):
    config, result, events = trained
    seen = list(dict.fromkeys(event.stage for event in events))
    assert seen == list(STAGES)
    rows = [event.metrics["row"] for event in events if "row" in event.metrics]
    assert [r["stage"] for r in rows] == [r["stage"] for r in result.history]
    logged = read_log(config.out_dir / "log.csv")
    assert len(logged) == len(rows)
    for row, written in zip(rows, logged, strict=True):
        assert written["stage"] == row["stage"] and written["epoch"] == row["epoch"]
        assert written["val_loss"] == pytest.approx(row["val_loss"], rel=1e-5)
        assert written["lr"] == pytest.approx(row["lr"])
    for stage in ("stage1-A", "stage1-B", "stage2"):
        epochs = [r["epoch"] for r in rows if r["stage"] == stage]
        assert epochs == list(range(1, len(epochs) + 1))
    batch_events = [e for e in events if e.stage == "stage1-A" and "batch" in e.metrics]
    assert all(0 <= e.metrics["accuracy"] <= 1 and e.metrics["lr"] > 0 for e in batch_events)


def test_bundle_loads_and_predicts_what_the_report_says(trained, cache_dir):
    config, result, _ = trained
    loaded = load_bundle(result.bundle_path)
    assert loaded.meta["training"]["config"]["backbone"] == "test_resnet"
    assert loaded.crop_size == 64
    # Training took one cell per image; the bundle must find every cell of a field.
    assert loaded.segmentation.largest_only is False
    assert (
        loaded.meta["metrics"]["ensemble_weighted_f1"] == result.report["weighted_f1"]["ensemble"]
    )
    cells = result.report["cells"]
    files = [Path(cell["file"]) for cell in cells]
    cache = drive(build_crop_cache(files, segmentation_params(config), cache_dir))
    crops = torch.from_numpy(np.ascontiguousarray(cache.crops[cache.rows(files)]))
    with torch.no_grad():
        probs = loaded.ensemble(crops).numpy()
    expected = np.array([cell["p_all"] for cell in cells])
    np.testing.assert_allclose(probs[:, :, 1], expected, atol=1e-4)


def test_resume_after_interruptions_gives_the_same_weights(
    trained, annotated_dir, cache_dir, tmp_path
):
    _, full, _ = trained
    out = tmp_path / "interrupted"
    config = tiny_config(annotated_dir, out, cache_dir)

    # 1. close the generator (as the widget's Cancel does) during stage 1-B, epoch 2
    work = train(config)
    for event in work:
        if (
            event.stage == "stage1-B"
            and event.metrics.get("epoch") == 2
            and event.metrics.get("batch") == 2
        ):
            break
    work.close()
    checkpoints = out / "checkpoints"
    assert json.loads((checkpoints / "stage1-A.json").read_text())["state"]["finished"]
    assert json.loads((checkpoints / "stage1-B.json").read_text())["state"]["epoch"] == 1
    assert not (out / "bundle").exists()

    # 2. a KeyboardInterrupt (Ctrl-C) during stage 2
    with pytest.raises(TrainingError, match="already holds files"):
        drive(train(config))
    work = train(tiny_config(annotated_dir, out, cache_dir, resume=True))
    with pytest.raises(KeyboardInterrupt):
        for event in work:
            if event.stage == "stage2" and event.metrics.get("epoch") == 3:
                work.throw(KeyboardInterrupt)
    assert json.loads((checkpoints / "stage2.json").read_text())["state"]["epoch"] == 2

    # 3. resume to the end: the same bundle as the run that was never interrupted
    resumed = drive(train(tiny_config(annotated_dir, out, cache_dir, resume=True)))
    expected, found = bundle_tensors(full.bundle_path), bundle_tensors(resumed.bundle_path)
    assert expected.keys() == found.keys()
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=0, atol=1e-6, msg=key)
    assert [r["val_loss"] for r in resumed.history] == pytest.approx(
        [r["val_loss"] for r in full.history], rel=1e-6
    )


def test_resume_keeps_the_runs_own_settings(trained, annotated_dir, cache_dir):
    config, _, _ = trained
    saved = load_run_config(config.out_dir)
    assert saved.batch_size == 32 and saved.epochs == EPOCHS and saved.backbone == "test_resnet"
    # resuming a finished run redoes no training and reports the same figures
    events = []
    again = drive(
        train(tiny_config(annotated_dir, config.out_dir, cache_dir, resume=True, epochs=3, seed=5)),
        events.append,
    )
    notes = " ".join(str(e.metrics.get("text", "")) for e in events)
    assert "--epochs 3 ignored" in notes and "--seed 5 ignored" in notes
    assert not [e for e in events if "batch" in e.metrics]
    assert again.report["weighted_f1"] == trained[1].report["weighted_f1"]


def test_finetune_backbones_stores_the_combined_models_own_backbones(
    annotated_dir, cache_dir, tmp_path
):
    config = tiny_config(
        annotated_dir, tmp_path / "finetune", cache_dir, epochs=1, finetune_backbones=True
    )
    result = drive(train(config))
    assert not (tmp_path / "finetune" / "features").exists()
    loaded = load_bundle(result.bundle_path)
    assert loaded.meta["combined_has_own_backbones"] is True
    assert loaded.ensemble.backbone_passes == 4
    assert set(result.report["weighted_f1"]) == {"model-A", "model-B", "combined", "ensemble"}


def test_clear_errors(tmp_path, cache_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="No images"):
        drive(train(tiny_config(empty, tmp_path / "r1", cache_dir)))

    only_all = tmp_path / "only_all"
    write_annotated_folder(only_all, n_all=6, n_hem=0, n_subjects=2, size=96)
    with pytest.raises(TrainingError, match="HEM"):
        drive(train(tiny_config(only_all, tmp_path / "r2", cache_dir)))

    one_subject = tmp_path / "one_subject"
    write_annotated_folder(one_subject, n_all=6, n_hem=4, n_subjects=1, size=96)
    with pytest.raises(TrainingError, match="subjects"):
        drive(train(tiny_config(one_subject, tmp_path / "r3", cache_dir)))

    with pytest.raises(TrainingError, match="test_resnet"):
        drive(train(tiny_config(one_subject, tmp_path / "r4", cache_dir, backbone="test_resnett")))

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="never overwritten"):
        drive(train(tiny_config(one_subject, busy, cache_dir)))
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(TrainingError, match="Nothing to resume"):
        drive(train(tiny_config(one_subject, busy, cache_dir, resume=True)))


def test_out_of_gpu_memory_says_which_batch_size_to_try(tmp_path, cache_dir, monkeypatch):
    from napari_allbag.training import run as trainer

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield  # pragma: no cover

    monkeypatch.setattr(trainer, "_train", out_of_memory)
    (tmp_path / "cells").mkdir()  # the run folder must be outside the data (io.paths)
    with pytest.raises(TrainingError, match="--resume --batch-size 16"):
        drive(train(tiny_config(tmp_path / "cells", tmp_path / "run", cache_dir)))


def test_crop_feeder_gives_the_same_batches_with_worker_processes(trained, cache_dir):
    config, result, _ = trained
    files = [Path(cell["file"]) for cell in result.report["cells"]][:20]
    cache = drive(build_crop_cache(files, segmentation_params(config), cache_dir))
    from napari_allbag.model.networks import Preprocess, resolve_backbone

    preprocess = Preprocess(resolve_backbone("test_resnet", 64))
    labels = np.arange(20) % 2
    flags = labels == 1
    batches = {}
    for workers in (0, 1):
        feeder = CropFeeder(
            cache,
            cache.rows(files),
            labels,
            8,
            torch.device("cpu"),
            preprocess,
            augment=flags,
            workers=workers,
        )
        random = EpochRandom.for_epoch(0, "test", 1, torch.device("cpu"))
        batches[workers] = list(feeder.batches(random))
        feeder.close()
    for (x0, y0), (x1, y1) in zip(batches[0], batches[1], strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert sorted(torch.cat([y for _, y in batches[0]]).tolist()) == sorted(labels.tolist())


def test_batch_positions_never_leave_a_batch_of_one():
    assert batch_positions(5, 2) == [[0, 1], [2, 3, 4]]
    assert batch_positions(4, 2) == [[0, 1], [2, 3]]
    assert batch_positions(1, 2) == [[0]]


def test_smoke_run_on_the_real_cnmc_sample(cnmc_dir, cache_dir, tmp_path):
    config = tiny_config(cnmc_dir, tmp_path / "real", cache_dir, epochs=2)
    result = drive(train(config))
    summary = json.loads((tmp_path / "real" / "summary.json").read_text())
    assert summary["cells"] == 62 and summary["split"]["by_subject"]
    loaded = load_bundle(result.bundle_path)
    with torch.no_grad():
        probs = loaded.ensemble(torch.zeros((2, 64, 64, 3), dtype=torch.uint8))
    assert probs.shape == (2, 3, 2)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(2, 3))
    assert len(read_log(result.log_path)) == 6


def test_the_bundle_carries_temperatures_threshold_and_subjects(trained):
    """Calibration fitted on the validation split; the threshold keeps the target sensitivity."""
    from napari_allbag.model.calibration import apply_temperatures
    from napari_allbag.model.rules import rule_p_all

    config, result, _ = trained
    loaded = load_bundle(result.bundle_path)
    trust = loaded.trust
    assert loaded.meta["format_version"] == 2 and trust.rule == "max"
    assert trust.temperatures is not None and all(t > 0 for t in trust.temperatures)
    summary = json.loads((config.out_dir / "summary.json").read_text())
    assert trust.subjects["train"] == sorted(summary["split"]["train_subjects"])
    assert trust.subjects["val"] == sorted(summary["split"]["val_subjects"])
    cells = result.report["cells"]
    labels = np.array([cell["label"] == "all" for cell in cells], dtype=np.int64)
    p_all = np.array([cell["p_all"] for cell in cells])
    probs = apply_temperatures(np.stack([1 - p_all, p_all], axis=-1), trust.temperatures)
    called = rule_p_all(probs, "max") >= trust.threshold["threshold"]
    assert called[labels == 1].mean() >= config.target_sensitivity
    assert called[labels == 1].mean() == pytest.approx(trust.threshold["sensitivity"])
    calibration = loaded.meta["calibration"]
    assert set(calibration["ece_before"]) == {"model-A", "model-B", "combined", "ensemble"}
    assert "ECE ensemble" in result.report_text and "P(ALL) >=" in result.report_text
