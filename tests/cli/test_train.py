"""`napari-allbag train`: a tiny run, Ctrl-C with the printed resume command, clear errors."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from napari_allbag.cli.main import build_parser, main
from napari_allbag.data.synthetic import write_annotated_folder


@pytest.fixture(scope="module")
def annotated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("annotated")
    write_annotated_folder(root, n_all=60, n_hem=30, n_subjects=3, seed=2, size=128)
    return root


def tiny_args(data: Path, out: Path, cache: Path) -> list[str]:
    return [
        "train",
        str(data),
        "--out",
        str(out),
        "--backbone",
        "test_resnet",
        "--img-size",
        "64",
        "--crop-size",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--no-pretrained",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--cache-dir",
        str(cache),
        "--seed",
        "3",
    ]


def test_help_lists_the_options():
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for option in (
        "--out",
        "--backbone",
        "--img-size",
        "--epochs",
        "--batch-size",
        "--device",
        "--no-pretrained",
        "--weights",
        "--finetune-backbones",
        "--seed",
        "--resume",
        "--workers",
        "--crop-size",
        "--val-fraction",
        "--lr",
        "--subjects-csv",
    ):
        assert option in help_text
    assert "7:3" in help_text and "0.001" in help_text  # the paper's settings, named


def test_val_fraction_and_lr_reach_the_config(tmp_path):
    from napari_allbag.cli.train import config_from_args

    args = build_parser().parse_args(
        ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--val-fraction", "0.2"]
        + ["--lr", "0.0005"]
    )
    config = config_from_args(args)
    assert config.val_fraction == 0.2 and config.lr == 0.0005
    default = config_from_args(build_parser().parse_args(["train", str(tmp_path), "--out", "r"]))
    assert default.val_fraction == 0.3 and default.lr == 0.001


def test_a_bad_val_fraction_is_refused_by_name(annotated, tmp_path, capsys):
    code = main(["train", str(annotated), "--out", str(tmp_path / "r"), "--val-fraction", "1.5"])
    assert code == 2
    assert "val" in capsys.readouterr().err


def test_train_writes_a_run_folder(annotated, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(annotated, out, tmp_path / "cache")) == 0
    printed = capsys.readouterr()
    assert "cells: 90 (60 ALL, 30 HEM)" in printed.out + printed.err
    lines = (printed.out + printed.err).splitlines()
    steps = [line for line in lines if line.startswith("Step ")]  # each step once, in order
    assert [line[:12] for line in steps] == [f"Step {k} of 5:" for k in range(1, 6)], steps
    assert steps[3] == "Step 4 of 5: building model-A (test_resnet, random weights)"
    assert "weighted avg" in printed.out + printed.err
    assert f"Model bundle: {out / 'bundle'}" in printed.out
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["backbone"] == "test_resnet" and config["seed"] == 3
    assert config["pretrained"] is False and config["epochs"] == 2
    for name in ("log.csv", "curves.png", "report.json", "bundle/bundle.json"):
        assert (out / name).is_file()

    # the same folder again: refused, nothing overwritten
    before = (out / "report.json").read_bytes()
    assert main(tiny_args(annotated, out, tmp_path / "cache")) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before


def test_ctrl_c_prints_the_resume_command_that_finishes_the_run(
    annotated, tmp_path, capsys, monkeypatch
):
    from napari_allbag.training import run as trainer

    real_train = trainer.train

    def interrupted_by_ctrl_c(config):
        work = real_train(config)
        for event in work:
            yield event
            if event.stage == "stage1-B" and event.metrics.get("batch") == 1:
                work.throw(KeyboardInterrupt)

    monkeypatch.setattr(trainer, "train", interrupted_by_ctrl_c)
    out = tmp_path / "run"
    assert main(tiny_args(annotated, out, tmp_path / "cache")) == 130
    err = capsys.readouterr().err
    assert "Training interrupted" in err
    command = next(line.strip() for line in err.splitlines() if "--resume" in line)
    assert command.startswith("napari-allbag train ")
    assert json.loads((out / "checkpoints" / "stage1-A.json").read_text())["state"]["finished"]
    assert not (out / "bundle").exists()

    monkeypatch.setattr(trainer, "train", real_train)
    assert main(shlex.split(command)[1:]) == 0
    assert (out / "bundle" / "bundle.json").is_file()
    assert "resuming the run" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: root.mkdir(), "No images"),
        (lambda root: write_annotated_folder(root, 4, 0, 2, size=96), "both classes"),
    ],
)
def test_clear_errors_exit_with_status_2(make, expected, tmp_path, capsys):
    data = tmp_path / "data"
    make(data)
    assert main(tiny_args(data, tmp_path / "run", tmp_path / "cache")) == 2
    assert expected in capsys.readouterr().err


def test_unknown_backbone_names_close_matches(annotated, tmp_path, capsys):
    args = tiny_args(annotated, tmp_path / "run", tmp_path / "cache")
    args[args.index("test_resnet")] = "inception_resnet_v3"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "inception_resnet_v2" in err
    assert not (tmp_path / "run").exists()


def test_background_reaches_the_training_segmentation(tmp_path):
    from napari_allbag.cli.train import config_from_args
    from napari_allbag.training.prepare import segmentation_params

    parser = build_parser()
    base = ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    auto = config_from_args(parser.parse_args(base))
    assert segmentation_params(auto).background == "auto" and auto.segmentation == {}
    bright = config_from_args(parser.parse_args([*base, "--background", "bright"]))
    assert segmentation_params(bright).background == "bright"
    assert "dark" in parser._subparsers._group_actions[0].choices["train"].format_help()
