"""`napari-allbag train DATA_DIR --out RUN_DIR`: the paper's two-stage bagging training.

Writes into RUN_DIR the model bundle (`bundle/`), `log.csv`, `curves.png`, the validation report
(`report.txt`, `report.json`), the data summary and per-epoch checkpoints. Ctrl-C stops cleanly;
the printed `--resume` command continues from the last finished epoch.

Several GPUs: `torchrun --nproc_per_node N -m napari_allbag train ...` (any torchrun launch, also
over several machines) trains data-parallel; `--gpus N` starts that torchrun on this machine
(with `--device cpu`: N CPU processes, for tests). See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from napari_allbag.cli.options import (
    add_background_option,
    add_cache_dir_option,
    add_subjects_csv_option,
)
from napari_allbag.defaults import (
    DEFAULT_BACKBONE,
    DEFAULT_DIST_TIMEOUT_S,
    DEFAULT_TARGET_SENSITIVITY,
    ENSEMBLE_RULES,
)
from napari_allbag.progress import Progress, drive_with_bar

T = TypeVar("T")

#: Live figures shown on the progress bar, in this order.
BAR_FIGURES = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def register(subparsers) -> None:
    """The `train` subcommand: its options in groups by concern (data, model, schedule, ...)."""
    parser = subparsers.add_parser(
        "train",
        help="train the bagging ensemble on an annotated folder (all/ and hem/)",
        description=(
            "Train model-A and model-B on the paper's bagging sets, then the combined model, and "
            "write a model bundle, log.csv, curves.png and a validation report into RUN_DIR. "
            "DATA_DIR holds the cells in all/ and hem/ folders (any depth) or named *_all/*_hem."
        ),
    )
    parser.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="annotated folder")
    _add_data_options(parser.add_argument_group("data"))
    _add_model_options(parser.add_argument_group("model"))
    _add_schedule_options(parser.add_argument_group("schedule"))
    _add_hardware_options(parser)
    _add_output_options(parser.add_argument_group("output"))
    parser.set_defaults(func=run, train_parser=parser)


def _add_data_options(data) -> None:
    """Which cells: the validation split, subjects, crops, cache and segmentation."""
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.3,
        metavar="F",
        help="share of the subjects kept for validation (default 0.3: the paper's 7:3 split, "
        "by subject, stratified)",
    )
    data.add_argument(
        "--crop-size",
        type=int,
        default=299,
        metavar="PX",
        help="side of the segmented crops (default 299, the paper's)",
    )
    add_subjects_csv_option(data)
    add_cache_dir_option(data)
    add_background_option(data)


def _add_model_options(model) -> None:
    """Which network: backbone, size, starting weights, and the bundle's decision defaults."""
    model.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"timm backbone name (default {DEFAULT_BACKBONE}, the paper's)",
    )
    model.add_argument(
        "--img-size",
        type=int,
        default=None,
        metavar="PX",
        help="backbone input size (default: the backbone's own, 299 for the paper's)",
    )
    model.add_argument(
        "--no-pretrained",
        action="store_true",
        help="start from random weights instead of ImageNet's",
    )
    model.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="local backbone weights (.safetensors) instead of the download",
    )
    model.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="start warm from a bundle's backbones and head (e.g. to fine-tune on corrected "
        "cells); the new bundle records it as its parent",
    )
    model.add_argument(
        "--finetune-backbones",
        action="store_true",
        help="train the combined model end to end (default: frozen backbones)",
    )
    model.add_argument(
        "--target-sensitivity",
        type=float,
        default=DEFAULT_TARGET_SENSITIVITY,
        metavar="S",
        help="ALL sensitivity the stored P(ALL) threshold keeps on the validation subjects "
        f"(used by predict/evaluate --decision threshold; default {DEFAULT_TARGET_SENSITIVITY})",
    )
    model.add_argument(
        "--rule",
        choices=ENSEMBLE_RULES,
        default="max",
        help="the ensemble rule the bundle uses by default (default max, the paper's)",
    )


def _add_schedule_options(schedule) -> None:
    """How long and how fast: epochs, batch size, learning rate, seed, resuming."""
    schedule.add_argument(
        "--epochs", type=int, default=50, help="most epochs per stage (default 50)"
    )
    schedule.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="batch size (default 32 on CPU, 64 on a GPU)",
    )
    schedule.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        metavar="LR",
        help="initial learning rate of RMSprop (default 0.001, the paper's: Keras's RMSprop "
        "default; lowered x0.1 when the validation loss stalls)",
    )
    schedule.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    schedule.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last finished epoch",
    )


def _add_hardware_options(parser: argparse.ArgumentParser) -> None:
    """Where it runs: device, worker processes, compilation, and several GPUs."""
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument(
        "--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)"
    )
    hardware.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes for segmentation and data loading (default: automatic)",
    )
    hardware.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbones while training (faster steps on a GPU after a "
        "compilation of some seconds per stage)",
    )
    parallel = parser.add_argument_group(
        "several GPUs (see docs/distributed.md)",
        "Under torchrun every process trains its share of each batch (DistributedDataParallel); "
        "--batch-size is then the global batch (default: 64 per GPU).",
    )
    parallel.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="train on N GPUs of this machine: starts torchrun with N processes (with "
        "--device cpu: N CPU processes, for tests)",
    )
    parallel.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_DIST_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a process waits for the others before it stops with an error "
        f"(default {DEFAULT_DIST_TIMEOUT_S:g})",
    )
    parallel.add_argument(
        "--sync-batchnorm",
        choices=("auto", "on", "off"),
        default="auto",
        help="SyncBatchNorm across GPUs: auto = when each GPU's batch is below 32 (default)",
    )
    parallel.add_argument(
        "--parallel-models",
        action="store_true",
        help="train model-A and model-B at the same time, each on half of the processes "
        "(then stage 2 on all)",
    )


def _add_output_options(output) -> None:
    """Where the run goes and what it prints."""
    output.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="RUN_DIR",
        help="run folder (new or empty; with --resume, the run to continue)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bar")


def _warm_backbone(args: argparse.Namespace) -> tuple[str, int | None]:
    """The backbone and image size: with --init-from and no --backbone, the bundle's own."""
    if args.init_from is None or args.backbone != DEFAULT_BACKBONE:
        return args.backbone, args.img_size
    from napari_allbag.model.bundle import BundleError, read_bundle_meta
    from napari_allbag.training.config import TrainingError

    try:
        backbone = read_bundle_meta(args.init_from)["backbone"]
    except BundleError as error:
        raise TrainingError(f"--init-from {args.init_from}: {error}") from error
    return backbone["name"], args.img_size or backbone.get("img_size")


def config_from_args(args: argparse.Namespace):
    from napari_allbag.training.run import TrainConfig

    backbone, img_size = _warm_backbone(args)
    return TrainConfig(
        data_dir=args.data_dir,
        out_dir=args.out,
        backbone=backbone,
        img_size=img_size,
        pretrained=not args.no_pretrained,
        weights_path=args.weights,
        init_from=args.init_from,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        finetune_backbones=args.finetune_backbones,
        seed=args.seed,
        val_fraction=args.val_fraction,
        lr=args.lr,
        resume=args.resume,
        workers=args.workers,
        crop_size=args.crop_size,
        segmentation={} if args.background == "auto" else {"background": args.background},
        subjects_csv=args.subjects_csv,
        cache_dir=args.cache_dir,
        compile=args.compile,
        sync_batchnorm=args.sync_batchnorm,
        parallel_models=args.parallel_models,
        target_sensitivity=args.target_sensitivity,
        rule=args.rule,
    )


def resume_command(args: argparse.Namespace, environ=None) -> str:
    """The command that continues this run (the same launch: one process, --gpus or torchrun)."""
    from napari_allbag.training import distributed  # torch loads only when training starts

    environ = os.environ if environ is None else environ
    parts = ["train", str(args.data_dir), "--out", str(args.out), "--resume"]
    for option, value in (
        ("--device", args.device),
        ("--workers", args.workers),
        ("--cache-dir", args.cache_dir),
    ):
        if value is not None:
            parts += [option, str(value)]
    if args.compile:
        parts.append("--compile")
    if getattr(args, "parallel_models", False):
        parts.append("--parallel-models")
    if environ.get(distributed.GPUS_ENV):
        return shlex.join(["napari-allbag", *parts, "--gpus", environ[distributed.GPUS_ENV]])
    if distributed.launch_env(environ) is not None:
        return "torchrun <the same torchrun options> -m napari_allbag " + shlex.join(parts)
    return shlex.join(["napari-allbag", *parts])


def argv_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, leave_out: tuple[str, ...] = ()
) -> list[str]:
    """The `train` arguments that give `args` again (options at their default left out)."""
    positionals: list[str] = []
    options: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in leave_out:
            continue
        value = getattr(args, action.dest, None)
        if not action.option_strings:
            positionals.append(str(value))
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                options.append(flag)
        elif value is not None and value != action.default:
            options += [flag, str(value)]
    return positionals + options


def launch_local(args: argparse.Namespace) -> int:
    """`--gpus N`: run this command under torchrun with N processes on this machine."""
    from napari_allbag.training import distributed  # torch loads only when training starts
    from napari_allbag.training.run import TrainingError

    count = args.gpus
    try:
        device = _launch_device(args.device, count)
        if distributed.launch_env() is not None:
            raise TrainingError(
                "--gpus starts torchrun itself; this process already runs under torchrun. "
                "Leave --gpus out of the torchrun command."
            )
        _preflight(args)
    except TrainingError as error:
        print(f"napari-allbag train: {error}", file=sys.stderr)
        return 2
    if count == 1:
        args.gpus = None
        return run(args)
    command = distributed.torchrun_command(
        count, argv_from_args(args.train_parser, args, leave_out=("gpus",))
    )
    environ = dict(os.environ)
    environ[distributed.GPUS_ENV] = str(count)
    if device == "cpu" and "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
    print(f"Starting {count} training processes: {shlex.join(command)}", file=sys.stderr)
    process = subprocess.Popen(command, env=environ)
    try:
        return process.wait()
    except KeyboardInterrupt:
        # torchrun got the Ctrl-C too and stops its processes; rank 0 prints how to resume
        return process.wait() or 130


def _launch_device(name: str | None, count: int) -> str:
    """The device kind ("cuda" or "cpu") for `--gpus count`, with clear errors."""
    import torch

    from napari_allbag.training.run import TrainingError

    if count < 1:
        raise TrainingError(f"--gpus needs at least 1 (got {count}).")
    text = (name or "auto").strip().lower()
    if text == "cpu":
        return "cpu"
    if text not in ("auto", "cuda"):
        raise TrainingError(
            f"--gpus {count} with --device {name}: use --device cuda (each process takes its own "
            "GPU; choose them with CUDA_VISIBLE_DEVICES) or --device cpu (CPU processes, tests)."
        )
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise TrainingError(
            f"--gpus {count}: this machine has no CUDA GPU. Add --device cpu to start {count} CPU "
            "processes instead (useful for tests), or train on one process without --gpus."
        )
    if count > available:
        raise TrainingError(
            f"--gpus {count}: this machine has only {available} GPU(s). Use --gpus {available}."
        )
    return "cuda"


def _preflight(args: argparse.Namespace) -> None:
    """Errors worth catching before starting processes: settings, folders."""
    from napari_allbag.training.config import check_new_run_folder
    from napari_allbag.training.run import TrainingError

    config = config_from_args(args)
    if not config.data_dir.is_dir():
        raise TrainingError(
            f"Annotated folder not found: {config.data_dir}. Choose the folder that holds the "
            "all/ and hem/ folders."
        )
    if not config.resume:
        check_new_run_folder(config.out_dir)  # the rule prepare_run applies (a failed start: retry)


def for_terminal(
    work: Generator[Progress, None, T], quiet: bool = False
) -> Generator[Progress, None, T]:
    """Print each numbered step as it begins ("Step 2 of 5: reading files 0/400") and the
    run's texts (summary, report); keep only short figures for the bar."""
    from tqdm import tqdm

    from napari_allbag.training.steps import step_text

    step = None
    while True:
        try:
            event = next(work)
        except StopIteration as stop:
            return stop.value
        if event.metrics.get("step", step) != step and not quiet:
            step = event.metrics["step"]
            tqdm.write(step_text(event))
        text = event.metrics.get("text")
        if text and not quiet:
            tqdm.write(str(text))
        figures = {k: event.metrics[k] for k in BAR_FIGURES if k in event.metrics}
        yield Progress(event.done, event.total, event.stage, event.message, figures)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a scheduler stopping the job) handled as Ctrl+C: the finished epochs are
    kept and the resume command is printed (issue 13). Only the main thread can do this."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (e.g. a test runner's worker)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from napari_allbag.training import distributed  # torch loads only when training starts
    from napari_allbag.training.run import TrainingError, train

    if getattr(args, "gpus", None) is not None:
        return launch_local(args)
    rank = 0
    try:
        launch = distributed.launch_env()
        if launch is not None:
            rank = launch.rank
            # On the CPU a 1x1 convolution's gradient comes in another memory layout than DDP's
            # bucket; DDP copies it (harmless) but warns in every process.
            warnings.filterwarnings(
                "ignore", message="Grad strides do not match bucket view strides"
            )
        main = rank == 0
        with (
            sigterm_as_interrupt(),
            distributed.process_group(args.device, args.dist_timeout) as group,
        ):
            config = config_from_args(args)
            if group.is_distributed:
                config = replace(config, device=str(group.device))
            quiet = args.quiet or not main
            work = train(config, group) if group.is_distributed else train(config)
            result = drive_with_bar(for_terminal(work, quiet), quiet=quiet)
    except distributed.ForwardedError:
        return 2  # rank 0 prints it
    except TrainingError as error:
        prefix = "" if rank == 0 else f"[process {rank}] "
        print(f"{prefix}napari-allbag train: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank == 0:
            print(
                "\nTraining interrupted. Every finished epoch is saved in "
                f"{Path(args.out) / 'checkpoints'}. Continue with:\n  {resume_command(args)}",
                file=sys.stderr,
            )
        return 130
    if not main:
        return 0
    print(f"Model bundle: {result.bundle_path}")
    print(f"Report: {result.run_dir / 'report.txt'}")
    print(f"Training log: {result.log_path}  curves: {result.curves_path}")
    weighted = result.report["weighted_f1"]
    print("Validation weighted F1: " + ", ".join(f"{k} {v:.3f}" for k, v in weighted.items()))
    return 0
