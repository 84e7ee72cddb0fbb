"""training.config: settings checked at once, the run folder never overwritten, resume rules."""

from __future__ import annotations

import json

import pytest

from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.io.lock import lock_path_for
from napari_allbag.training.config import (
    RUNTIME_FIELDS,
    RunPaths,
    TrainConfig,
    TrainingError,
    claim_run_folder,
    holds_run_files,
    load_run_config,
    prepare_run,
    remove_leftovers,
)


def _config(tmp_path, **changes) -> TrainConfig:
    values = dict(data_dir=tmp_path / "cells", out_dir=tmp_path / "run", backbone="test_resnet")
    return TrainConfig(**{**values, **changes})


def test_every_bad_setting_is_named_in_one_error(tmp_path):
    with pytest.raises(TrainingError) as caught:
        _config(tmp_path, epochs=0, batch_size=1, lr=0, val_fraction=1.0, sync_batchnorm="x")
    message = str(caught.value)
    for part in ("--epochs", "--batch-size", "--lr", "--val-fraction", "--sync-batchnorm"):
        assert part in message, part
    with pytest.raises(TrainingError, match="class_weights"):
        _config(tmp_path, class_weights=(1.0, 0.0))


def test_settings_round_trip_through_json(tmp_path):
    config = _config(tmp_path, epochs=3, subjects_csv=tmp_path / "s.csv", class_weights=[1, 2])
    data = json.loads(json.dumps(config.to_dict()))
    assert data["data_dir"] == str(tmp_path / "cells") and data["class_weights"] == [1.0, 2.0]
    again = TrainConfig.from_dict({**data, "from_a_newer_version": True})
    assert again == config
    assert config.is_main_process and not _config(tmp_path, rank=1, world_size=2).is_main_process


def test_a_new_run_gets_its_folder_and_config(tmp_path):
    config = _config(tmp_path, epochs=4)
    started, notes = prepare_run(config)
    assert started == config and notes == []
    assert load_run_config(config.out_dir) == config
    saved = json.loads(RunPaths(config.out_dir).config.read_text())
    assert "napari_allbag" in saved
    (RunPaths(config.out_dir).checkpoints).mkdir()
    (RunPaths(config.out_dir).checkpoints / "stage1-A.json").write_text("{}")
    with pytest.raises(TrainingError, match="continue it with --resume"):
        prepare_run(config)
    other = _config(tmp_path, out_dir=tmp_path / "other")
    other.out_dir.mkdir()
    (other.out_dir / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="never overwritten") as caught:
        prepare_run(other)
    assert "--resume" not in str(caught.value)
    (tmp_path / "afile").write_text("")
    with pytest.raises(TrainingError, match="is a file"):
        prepare_run(_config(tmp_path, out_dir=tmp_path / "afile"))


def test_a_resumed_run_keeps_what_shapes_the_result(tmp_path):
    first = _config(tmp_path, epochs=4, lr=0.01, batch_size=8, workers=0)
    prepare_run(first)
    RunPaths(first.out_dir).log.write_text("stage,epoch\n")  # an epoch was trained
    asked = _config(tmp_path, resume=True, epochs=9, workers=2, device="cpu")
    resumed, notes = prepare_run(asked)
    assert resumed.epochs == 4 and resumed.lr == 0.01 and resumed.batch_size == 8
    assert resumed.workers == 2 and resumed.device == "cpu" and resumed.resume
    assert {name: getattr(resumed, name) for name in RUNTIME_FIELDS} == {
        name: getattr(asked, name) for name in RUNTIME_FIELDS
    }
    assert notes == ["--epochs 9 ignored: the run continues with --epochs 4"]
    smaller, notes = prepare_run(_config(tmp_path, resume=True, batch_size=4))
    assert smaller.batch_size == 4 and "batch size changed from 8 to 4" in notes[0]
    assert load_run_config(first.out_dir).batch_size == 4  # the run goes on with it


def test_a_folder_that_is_not_a_run_cannot_be_resumed(tmp_path):
    with pytest.raises(TrainingError, match="Nothing to resume"):
        prepare_run(_config(tmp_path, resume=True))
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    paths.config.write_text("{not json")
    with pytest.raises(TrainingError, match="damaged"):
        load_run_config(paths.root)
    paths.config.write_text(json.dumps({"config": {"epochs": 3}}))  # no data_dir
    with pytest.raises(TrainingError, match="damaged"):
        load_run_config(paths.root)


# issue 13, item 8: a run killed before config.json; leftovers of killed writes; the lock


def _leftovers(out):
    (out / "checkpoints").mkdir(parents=True)
    (out / ".config.json.1a2b3c4d.tmp").write_text('{"config": ')
    (out / "checkpoints" / ".stage1-A.json.deadbeef.tmp").write_text("x")
    partial = out / ".bundle.partial-0badc0de"
    partial.mkdir()
    (partial / "model_a.safetensors").write_bytes(b"\0" * 100)


def test_a_folder_holding_only_leftovers_starts_fresh(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.1a2b3c4d.tmp").write_text('{"config": ')
    assert not holds_run_files(out)
    config = TrainConfig(data_dir=tmp_path / "data", out_dir=out)
    with pytest.raises(TrainingError, match="without --resume"):
        prepare_run(TrainConfig(data_dir=tmp_path / "data", out_dir=out, resume=True))
    prepare_run(config)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_leftovers_are_removed_and_finished_outputs_kept(tmp_path):
    out = tmp_path / "run"
    _leftovers(out)
    (out / "log.csv").write_text("a\n")
    (out / "notes.tmp").write_text("a user's file")  # not hidden: not ours
    assert holds_run_files(out)
    remove_leftovers(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "checkpoints",
        "log.csv",
        "notes.tmp",
    ]


def test_the_run_folder_is_locked_and_never_inside_the_data(tmp_path):
    data = tmp_path / "data"
    write_annotated_folder(data, n_all=2, n_hem=2, n_subjects=1, seed=0, size=64)
    with pytest.raises(TrainingError, match="inside the input folder"):
        claim_run_folder(TrainConfig(data_dir=data, out_dir=data / "hem" / "run"))
    config = TrainConfig(data_dir=data, out_dir=tmp_path / "run")
    lock = claim_run_folder(config)
    try:
        with pytest.raises(TrainingError, match="in use by another napari-allbag run"):
            claim_run_folder(config)
    finally:
        lock.release()
    assert not lock_path_for(config.out_dir).exists()


def test_a_failed_start_can_be_retried(tmp_path):
    # the first start stopped before its first epoch (no network for the ImageNet weights):
    # config.json and the data summary are all the folder holds
    first = _config(tmp_path)
    prepare_run(first)
    paths = RunPaths(first.out_dir)
    paths.summary_json.write_text("{}")
    (paths.root / ".log.csv.1234abcd.tmp").write_text("half")
    again, notes = prepare_run(_config(tmp_path, pretrained=False))
    assert not again.pretrained and notes == []
    assert load_run_config(first.out_dir).pretrained is False
    assert not (paths.root / ".log.csv.1234abcd.tmp").exists()
    # --resume after such a start honours the settings given now (--no-pretrained is not dropped)
    prepare_run(_config(tmp_path, pretrained=True))
    resumed, notes = prepare_run(_config(tmp_path, resume=True, pretrained=False))
    assert not resumed.pretrained and not resumed.resume and "nothing was trained" in notes[0]


def test_resume_refuses_other_starting_weights_naming_the_flag(tmp_path):
    prepare_run(_config(tmp_path, pretrained=True))
    RunPaths(tmp_path / "run").log.write_text("stage,epoch\n")
    with pytest.raises(TrainingError, match="--no-pretrained cannot change on --resume") as caught:
        prepare_run(_config(tmp_path, resume=True, pretrained=False))
    assert "pretrained=" not in str(caught.value)


def test_a_folder_with_the_users_files_is_still_refused(tmp_path):
    config = _config(tmp_path)
    prepare_run(config)
    (config.out_dir / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="never overwritten"):
        prepare_run(config)
