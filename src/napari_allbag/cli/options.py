"""Options and error reporting shared by the subcommands, so they read and behave alike."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_allbag.defaults import BACKGROUND_HELP, BACKGROUND_MODES


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best available)"
    )


def add_batch_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="cells per batch (default: 256 on a GPU, 32 on CPU)",
    )


def add_workers_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"processes {what} (default: all cores)",
    )


def fail(command: str, message: str, code: int = 2) -> int:
    """Print `napari-allbag COMMAND: message` on stderr and return the exit code."""
    print(f"napari-allbag {command}: {message}", file=sys.stderr)
    return code


def add_cache_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="crop cache folder (default: $NAPARI_ALLBAG_CACHE_DIR, else the user cache folder, "
        "e.g. ~/.cache/napari-allbag)",
    )


def add_background_option(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """`--background auto|dark|bright`; `default=None` means the model bundle's own setting."""
    where = "" if default else " Default: the bundle's (auto unless it was trained otherwise)."
    parser.add_argument(
        "--background",
        choices=BACKGROUND_MODES,
        default=default,
        help=f"which segmentation: {BACKGROUND_HELP}.{where}",
    )


def add_tiling_options(parser: argparse.ArgumentParser) -> None:
    """`--tile-above MP` and `--tile-size PX`: when and how large TIFFs are segmented in tiles."""
    from napari_allbag.segmentation.tiles import DEFAULT_TILE, TILING_MEGAPIXELS

    parser.add_argument(
        "--tile-above",
        type=float,
        default=TILING_MEGAPIXELS,
        metavar="MP",
        help="segment TIFF images larger than this many megapixels in overlapping tiles, "
        f"with bounded memory (default {TILING_MEGAPIXELS:g})",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE,
        metavar="PX",
        help=f"side of the tiles (default {DEFAULT_TILE}; they overlap by 256 px)",
    )


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        default="auto",
        help="auto, torch, onnxruntime or openvino (default auto: the fastest installed on the "
        'CPU, torch on a GPU; pip install "napari-allbag[fast-cpu]" for ONNX Runtime)',
    )


def checked_engine(engine: str, device: Any, compile: bool = False) -> str:
    """The engine name to run with, checked now (an unknown or missing engine fails before any
    work; raises `inference.engines.EngineError`); `compile` means torch."""
    from napari_allbag.inference.engines import EngineError, resolve_engine

    if compile and str(engine).lower() not in ("auto", "torch"):
        raise EngineError(f"--compile applies to --engine torch only, not {engine}")
    resolve_engine(engine, device)
    return "torch" if compile else engine


def add_trust_options(parser: argparse.ArgumentParser) -> None:
    """--rule, --tta and --decision, alike for predict and evaluate (issue 11)."""
    from napari_allbag.defaults import DECISIONS, ENSEMBLE_RULES

    parser.add_argument(
        "--rule",
        choices=ENSEMBLE_RULES,
        default=None,
        help="ensemble rule: max (the paper's: the highest of the six probabilities), mean (of "
        "the three models), agree (A and B where they agree, else the combined model), "
        "combined (that model alone); default: the bundle's (max)",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average the 8 flips/rotations of each crop (about 8x the "
        "time) and report their spread",
    )
    parser.add_argument(
        "--decision",
        choices=DECISIONS,
        default="paper",
        help="paper: the rule's own label (default); threshold: ALL where the calibrated P(ALL) "
        "reaches the bundle's sensitivity-first threshold (train --target-sensitivity)",
    )
