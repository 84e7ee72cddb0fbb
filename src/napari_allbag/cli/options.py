"""Options and error reporting shared by the subcommands, so they read and behave alike."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from contextlib import ExitStack
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


class CommandError(Exception):
    """Work that could not be done; the message names the file and the fix (exit code 1)."""


def guarded(
    command: str, body: Callable[[argparse.Namespace, ExitStack], int], args: argparse.Namespace
) -> int:
    """Run `body(args, claims)`; what it claims (`claim_outputs`) stays locked until it returns.

    An output that is refused or held by another run, or that cannot be written (disk full,
    read-only), ends the command with one message instead of a traceback.
    """
    from napari_allbag.io.atomic import OutputError
    from napari_allbag.io.lock import LockHeld
    from napari_allbag.io.paths import OutputLocationError

    try:
        with ExitStack() as claims:
            return body(args, claims)
    except (LockHeld, OutputLocationError) as error:
        return fail(command, str(error))
    except (OutputError, CommandError) as error:
        return fail(command, str(error), code=1)


def claim_outputs(
    claims: ExitStack,
    outputs: Iterable[Path],
    inputs: Iterable[Any],
    bundle: Any = None,
    folder: bool = False,
) -> None:
    """Refuse outputs that would destroy or pollute an input or the bundle, then lock each one
    (`<output>.lock` beside it, until the command ends) so a second run is told who writes it."""
    from napari_allbag.io.lock import RunLock
    from napari_allbag.io.paths import check_output_location

    outputs, inputs = list(outputs), list(inputs)
    for out in outputs:
        check_output_location(out, inputs, bundle, folder=folder)
    for out in outputs:
        claims.enter_context(RunLock(out))


def add_cache_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="crop cache folder (default: $NAPARI_ALLBAG_CACHE_DIR, else the user cache folder, "
        "e.g. ~/.cache/napari-allbag)",
    )


def add_subjects_csv_option(parser: argparse.ArgumentParser) -> None:
    """`--subjects-csv FILE` (train and evaluate alike); `--subjects` stays as a hidden alias."""
    parser.add_argument(
        "--subjects-csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="CSV with columns file,subject (default: subjects from C-NMC file names)",
    )
    parser.add_argument(  # evaluate's earlier name (before --subjects-csv): accepted, hidden
        "--subjects", dest="subjects_csv", type=Path, help=argparse.SUPPRESS
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
        help="auto, torch, onnxruntime, openvino or openvino-bf16 (default auto: the fastest "
        'installed on the CPU, torch on a GPU; pip install "napari-allbag[fast-cpu]" for ONNX '
        "Runtime). openvino-bf16 is approximate (bf16 on CPUs with AMX or AVX512_BF16, several "
        "times faster, probabilities may move by up to a tenth): check it with evaluate on "
        "annotated cells first",
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


def pipeline_options(args: argparse.Namespace, device: Any, engine: str) -> Any:
    """The one pipeline's options from the shared options of `predict` and `evaluate`."""
    from napari_allbag.inference.pipeline import PipelineOptions

    return PipelineOptions(
        batch_size=args.batch_size,
        device=device,
        workers=args.workers,
        compile=getattr(args, "compile", False),
        background=args.background,
        engine=engine,
        rule=args.rule,
        tta=args.tta,
        decision=args.decision,
    )
