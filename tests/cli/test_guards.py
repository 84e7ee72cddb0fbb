"""Issue 13 on the command line: locked outputs, refused output locations, a full disk or a
read-only folder, SIGTERM, non-finite probabilities, doubtful evaluation data. Each case ends
with one message naming the file and the fix, a non-zero exit, and nothing lost or half-written.

Faults: a full disk and a read-only folder are simulated by monkeypatching io.atomic's one
open/sync (tests.faults): the tests run as root, where chmod does not stop writes.
"""

from __future__ import annotations

import errno
import json
import os
import signal

import cv2
import pytest

from napari_allbag.cli.main import main
from napari_allbag.data.synthetic import make_field, write_annotated_folder
from napari_allbag.io.lock import RunLock, lock_path_for
from tests.cli.test_train import tiny_args
from tests.faults import fail_syncs, fail_writes, leftovers, nan_probabilities, refuse_writes
from tests.model_factory import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", seed=7)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    image, _ = make_field(seed=0, n_cells=3, shape=(256, 256))
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotated")
    write_annotated_folder(root, n_all=60, n_hem=30, n_subjects=3, seed=2, size=128)
    return root


def _predict(bundle_dir, inputs, out, *extra):
    args = ["predict", str(bundle_dir), str(inputs), "--out", str(out), "--device", "cpu"]
    return main([*args, "--workers", "1", "--quiet", *extra])


def _evaluate(bundle_dir, data, out, tmp_path):
    args = ["evaluate", str(bundle_dir), str(data), "--device", "cpu", "--workers", "1"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    return main(args + (["--out", str(out)] if out is not None else []))


# ----------------------------------------------------------------- items 1, 2: one writer


def test_a_second_predict_into_the_same_out_is_told_who_writes_it(
    bundle_dir, images, tmp_path, capsys
):
    out = tmp_path / "results.csv"
    with RunLock(out, command="napari-allbag predict (the first run)"):
        assert _predict(bundle_dir, images, out) == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "the first run" in err
    assert str(lock_path_for(out)) in err  # how to clear a stale one
    assert not out.exists()
    assert _predict(bundle_dir, images, out) == 0  # released: the next run works
    assert not lock_path_for(out).exists()


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_train_into_the_same_run_folder_is_refused(annotated, tmp_path, capsys, resume):
    out = tmp_path / "run"
    args = tiny_args(annotated, out, tmp_path / "cache") + (["--resume"] if resume else [])
    with RunLock(out, command="napari-allbag train (the first run)"):
        assert main(args) == 2
    err = capsys.readouterr().err
    assert "in use by another napari-allbag run" in err and f"pid {os.getpid()}" in err
    assert not out.exists() or not any(out.iterdir())


def test_evaluate_locks_its_report(bundle_dir, annotated, tmp_path, capsys):
    out = tmp_path / "report.json"
    with RunLock(out):
        assert _evaluate(bundle_dir, annotated, out, tmp_path) == 2
    assert "in use" in capsys.readouterr().err and not out.exists()


def test_segment_locks_its_output_folder(images, tmp_path, capsys):
    out = tmp_path / "cells"
    with RunLock(out):
        code = main(["segment", str(images), "--out", str(out), "--workers", "1", "--quiet"])
    assert code == 2 and "in use" in capsys.readouterr().err
    assert not (out / "cells.csv").exists()


# ----------------------------------------------------------------- items 4, 6: where outputs go


def test_predict_never_overwrites_an_input_image(bundle_dir, images, tmp_path, capsys):
    target = images / "a.png"
    before = target.read_bytes()
    assert _predict(bundle_dir, target, target, "--overwrite") == 2
    assert "input" in capsys.readouterr().err and target.read_bytes() == before


def test_predict_and_evaluate_never_write_into_the_bundle(
    bundle_dir, images, annotated, tmp_path, capsys
):
    before = (bundle_dir / "bundle.json").read_bytes()
    assert _predict(bundle_dir, images, bundle_dir / "bundle.json", "--overwrite") == 2
    assert "inside the model bundle" in capsys.readouterr().err
    assert _evaluate(bundle_dir, annotated, bundle_dir / "report.json", tmp_path) == 2
    assert "inside the model bundle" in capsys.readouterr().err
    assert (bundle_dir / "bundle.json").read_bytes() == before
    assert not (bundle_dir / "report.json").exists()


def test_a_run_folder_inside_the_data_is_refused(annotated, tmp_path, capsys):
    out = annotated / "all" / "run"
    assert main(tiny_args(annotated, out, tmp_path / "cache")) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------- item 11: disk full, read-only


def test_predict_on_a_full_disk_says_so_and_leaves_no_temp(
    bundle_dir, images, tmp_path, capsys, monkeypatch
):
    fail_writes(monkeypatch, errno.ENOSPC, after_bytes=40)
    out = tmp_path / "results.csv"
    code = _predict(bundle_dir, images, out)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"{out} could not be written" in err and "full" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_predict_into_a_read_only_folder(bundle_dir, images, tmp_path, capsys, monkeypatch):
    refuse_writes(monkeypatch, errno.EROFS)
    out = tmp_path / "results.csv"
    assert _predict(bundle_dir, images, out) == 1
    err = capsys.readouterr().err
    assert "read-only" in err and str(out) in err and leftovers(tmp_path) == []


def test_evaluate_into_a_read_only_folder(bundle_dir, annotated, tmp_path, capsys, monkeypatch):
    refuse_writes(monkeypatch, errno.EROFS)
    out = tmp_path / "report.json"
    assert _evaluate(bundle_dir, annotated, out, tmp_path) == 1
    err = capsys.readouterr().err
    assert "read-only" in err and str(out) in err and not out.exists()


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_train_on_a_full_disk_or_read_only_folder(annotated, tmp_path, capsys, monkeypatch, fault):
    if fault == "full":
        fail_syncs(monkeypatch, errno.ENOSPC)
    else:
        refuse_writes(monkeypatch, errno.EROFS)
    out = tmp_path / "run"
    assert main(tiny_args(annotated, out, tmp_path / "cache")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out) in err
    assert ("full" if fault == "full" else "read-only") in err and "--resume" in err
    assert leftovers(tmp_path) == [] and not lock_path_for(out).exists()


# ----------------------------------------------------------------- item 11: SIGTERM


class _Killed(Exception):
    """What SIGTERM raises in this test when train does not handle it (instead of dying)."""


def test_sigterm_stops_train_like_ctrl_c(annotated, tmp_path, capsys, monkeypatch):
    from napari_allbag.training import run as trainer

    real_train = trainer.train

    def terminated(config):
        work = real_train(config)
        for event in work:
            yield event
            if event.stage == "stage1-B" and event.metrics.get("batch") == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    def unhandled(signum, frame):
        raise _Killed

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        monkeypatch.setattr(trainer, "train", terminated)
        out = tmp_path / "run"
        assert main(tiny_args(annotated, out, tmp_path / "cache")) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert "Training interrupted" in err and "--resume" in err
    assert json.loads((out / "checkpoints" / "stage1-A.json").read_text())["state"]["finished"]
    assert not lock_path_for(out).exists()


# ----------------------------------------------------------------- item 8: kill -9 at the start


def test_a_run_killed_while_writing_config_json_starts_again_and_is_cleaned(
    annotated, tmp_path, capsys
):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.1a2b3c4d.tmp").write_text('{"half": ')  # kill -9 mid-write
    args = tiny_args(annotated, out, tmp_path / "cache")
    assert main(args + ["--resume"]) == 2
    assert "without --resume" in capsys.readouterr().err
    assert main(args) == 0
    assert (out / "bundle" / "bundle.json").is_file() and leftovers(out) == []

    # leftovers of a later kill: a temp file and a half-written bundle, cleaned on resume
    (out / "checkpoints" / ".stage2.json.00ff00ff.tmp").write_text("x")
    partial = out / ".bundle.partial-0badc0de"
    partial.mkdir()
    (partial / "model_a.safetensors").write_bytes(b"\0" * 1000)
    assert main(args + ["--resume"]) == 0
    assert leftovers(out) == []


# ----------------------------------------------------------------- item 9: never a NaN printed


def test_predict_refuses_to_write_a_non_finite_probability(
    bundle_dir, images, tmp_path, capsys, monkeypatch
):
    nan_probabilities(monkeypatch)
    out = tmp_path / "results.csv"
    assert _predict(bundle_dir, images, out) == 1
    captured = capsys.readouterr()
    assert "non-finite probability" in captured.err and "nan" not in captured.out.lower()
    assert not out.exists()


# ----------------------------------------------------------------- item 12: doubtful data


def test_evaluate_warns_on_one_class_and_misplaced_files(bundle_dir, tmp_path, capsys):
    data = tmp_path / "data"
    write_annotated_folder(data, n_all=0, n_hem=4, n_subjects=2, seed=5, size=128)
    assert _evaluate(bundle_dir, data, None, tmp_path) == 0
    printed = capsys.readouterr().out
    assert "WARNING: no ALL image" in printed and "support 0" in printed

    misplaced = next((data / "hem").iterdir())
    misplaced.rename(misplaced.with_name(misplaced.name.replace("_hem", "_all")))
    assert _evaluate(bundle_dir, data, None, tmp_path) == 0
    printed = capsys.readouterr().out
    assert "named for one class but lie in the other" in printed
    assert misplaced.name.replace("_hem", "_all") in printed
