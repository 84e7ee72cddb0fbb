"""`napari-allbag train DATA_DIR --out RUN_DIR`: the paper's two-stage bagging training.

Writes into RUN_DIR the model bundle (`bundle/`), `log.csv`, `curves.png`, the validation report
(`report.txt`, `report.json`), the data summary and per-epoch checkpoints. Ctrl-C stops cleanly;
the printed `--resume` command continues from the last finished epoch.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TypeVar

from napari_allbag.models import DEFAULT_BACKBONE
from napari_allbag.progress import Progress, drive_with_bar

T = TypeVar("T")

#: Live figures shown on the progress bar, in this order.
BAR_FIGURES = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def register(subparsers) -> None:
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
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="RUN_DIR",
        help="run folder (new or empty; with --resume, the run to continue)",
    )
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help=f"timm backbone name (default {DEFAULT_BACKBONE}, the paper's)",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        default=None,
        metavar="PX",
        help="backbone input size (default: the backbone's own, 299 for the paper's)",
    )
    parser.add_argument("--epochs", type=int, default=50, help="most epochs per stage (default 50)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="batch size (default 32 on CPU, 64 on a GPU)",
    )
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)"
    )
    parser.add_argument(
        "--no-pretrained",
        action="store_true",
        help="start from random weights instead of ImageNet's",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="local backbone weights (.safetensors) instead of the download",
    )
    parser.add_argument(
        "--finetune-backbones",
        action="store_true",
        help="train the combined model end to end (default: frozen backbones)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in RUN_DIR from its last finished epoch",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes for segmentation and data loading (default: automatic)",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        default=299,
        metavar="PX",
        help="side of the segmented crops (default 299, the paper's)",
    )
    parser.add_argument(
        "--subjects-csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="CSV with columns file,subject (default: from C-NMC file names)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where segmented crops are cached (default: the user cache folder)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbones while training (faster steps on a GPU after a "
        "compilation of some seconds per stage)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from napari_allbag.trainer import TrainConfig

    return TrainConfig(
        data_dir=args.data_dir,
        out_dir=args.out,
        backbone=args.backbone,
        img_size=args.img_size,
        pretrained=not args.no_pretrained,
        weights_path=args.weights,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        finetune_backbones=args.finetune_backbones,
        seed=args.seed,
        resume=args.resume,
        workers=args.workers,
        crop_size=args.crop_size,
        subjects_csv=args.subjects_csv,
        cache_dir=args.cache_dir,
        compile=args.compile,
    )


def resume_command(args: argparse.Namespace) -> str:
    """The command that continues this run."""
    parts = ["napari-allbag", "train", str(args.data_dir), "--out", str(args.out), "--resume"]
    for option, value in (
        ("--device", args.device),
        ("--workers", args.workers),
        ("--cache-dir", args.cache_dir),
    ):
        if value is not None:
            parts += [option, str(value)]
    if args.compile:
        parts.append("--compile")
    return shlex.join(parts)


def for_terminal(
    work: Generator[Progress, None, T], quiet: bool = False
) -> Generator[Progress, None, T]:
    """Print the run's texts (summary, report) and keep only short figures for the bar."""
    from tqdm import tqdm

    while True:
        try:
            event = next(work)
        except StopIteration as stop:
            return stop.value
        text = event.metrics.get("text")
        if text and not quiet:
            tqdm.write(str(text))
        figures = {k: event.metrics[k] for k in BAR_FIGURES if k in event.metrics}
        yield Progress(event.done, event.total, event.stage, event.message, figures)


def run(args: argparse.Namespace) -> int:
    from napari_allbag.trainer import TrainingError, train

    try:
        config = config_from_args(args)
        work = train(config)
        result = drive_with_bar(for_terminal(work, args.quiet), quiet=args.quiet)
    except TrainingError as error:
        print(f"napari-allbag train: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nTraining interrupted. Every finished epoch is saved in "
            f"{Path(args.out) / 'checkpoints'}. Continue with:\n  {resume_command(args)}",
            file=sys.stderr,
        )
        return 130
    print(f"Model bundle: {result.bundle_path}")
    print(f"Report: {result.run_dir / 'report.txt'}")
    print(f"Training log: {result.log_path}  curves: {result.curves_path}")
    weighted = result.report["weighted_f1"]
    print("Validation weighted F1: " + ", ".join(f"{k} {v:.3f}" for k, v in weighted.items()))
    return 0
