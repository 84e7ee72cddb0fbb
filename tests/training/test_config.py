"""training.config: a run folder killed before it saved config.json starts again; leftovers of
killed writes are cleaned when a run starts or resumes (issue 13, item 8)."""

from __future__ import annotations

import pytest

from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.io.lock import lock_path_for
from napari_allbag.training.config import (
    TrainConfig,
    TrainingError,
    claim_run_folder,
    holds_run_files,
    prepare_run,
    remove_leftovers,
)


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
