"""`napari-allbag predict BUNDLE INPUT... --out results.csv`: tag every cell ALL or HEM.

Each image is segmented with the bundle's segmentation parameters and each cell classified by the
ensemble (model-A, model-B, combined; the paper's highest-probability rule). `results.csv` gets one
row per cell, written as the cells are classified into a temporary file that replaces `--out` at
the end (interrupted runs keep what was done as `<out>.partial`). A summary per file (cells, ALL
count, ALL fraction) goes to the terminal and to `--summary FILE`; unreadable files are listed with
the reason and skipped.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_allbag.cli.options import (
    CommandError,
    add_background_option,
    add_batch_size_option,
    add_device_option,
    add_engine_option,
    add_trust_options,
    add_workers_option,
    checked_engine,
    claim_outputs,
    fail,
    guarded,
    pipeline_options,
)
from napari_allbag.inference import columns
from napari_allbag.io.atomic import AtomicCsv

if TYPE_CHECKING:  # torch loads only when a prediction runs, so `--help` stays fast
    from napari_allbag.inference.predict import FilePredictions, PredictionRun

SUMMARY_COLUMNS = columns.SUMMARY_COLUMNS
#: Above this many files the terminal shows totals only (the per-file table goes to --summary).
MAX_FILES_SHOWN = 100


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify every cell in images or folders as ALL or HEM with a model bundle",
        description=(
            "Segment each image with the bundle's segmentation parameters and classify every "
            "cell with the bagging ensemble. Writes one row per cell to --out (CSV)."
        ),
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="model bundle folder")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument(
        "--out", required=True, type=Path, metavar="CSV", help="per-cell results CSV to write"
    )
    parser.add_argument(
        "--summary", type=Path, default=None, metavar="FILE", help="per-file summary CSV to write"
    )
    add_device_option(parser)
    add_batch_size_option(parser)
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the ensemble (faster on large runs)"
    )
    add_engine_option(parser)
    add_workers_option(parser, "reading and segmenting images")
    add_trust_options(parser)
    parser.add_argument(
        "--cam",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a Grad-CAM overlay PNG per cell here (where the combined model saw ALL)",
    )
    parser.add_argument(
        "--overlays",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each image with its cells outlined and tagged (class, confidence, ? for "
        "review) here, one PNG per image",
    )
    add_background_option(parser, default=None)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out / --summary if they exist"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    return fail("predict", message)


def run(args: argparse.Namespace) -> int:
    return guarded("predict", _run, args)


class _Refused(Exception):
    """A reason not to start, printed as the command's one error line."""


def _run(args: argparse.Namespace, claims: ExitStack) -> int:
    from napari_allbag.inference.pipeline import decision_for

    try:
        _check_outputs(args, claims)
        paths = _input_images(args)
        bundle, options = _load_bundle(args)
    except _Refused as refusal:
        return _fail(str(refusal))
    for target in (args.out, args.summary):
        target.parent.mkdir(parents=True, exist_ok=True)
    writer = AtomicCsv(args.out, columns.RESULT_COLUMNS)
    try:
        decision_for(bundle, options)  # a threshold the bundle lacks: say so before any work
    except ValueError as error:
        writer.abandon(keep=False)
        return _fail(str(error))
    from napari_allbag.inference.overlay import OverlayWriter

    overlays = OverlayWriter(args.overlays) if args.overlays else None
    result = _classify(args, bundle, paths, options, (writer, overlays))
    writer.commit()
    if args.summary:
        columns.write_summary(args.summary, result.files)
    _print_summary(result, args, overlays)
    return 0 if result.cells or len(result.errors) < len(result.files) else 1


def _check_outputs(args: argparse.Namespace, claims: ExitStack) -> None:
    """Check the numeric options and claim the output files (and CAM folder) before any work."""
    if args.batch_size is not None and args.batch_size < 1:
        raise _Refused("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise _Refused("--workers must be at least 1")
    if args.summary is None:
        args.summary = summary_path(args.out)
    outputs = [args.out, args.summary]
    claim_outputs(claims, outputs, args.inputs, args.bundle)
    for folder in (args.cam, args.overlays):
        if folder is not None:
            claim_outputs(claims, [folder], args.inputs, args.bundle, folder=True)
    for target in outputs:
        if target.is_dir():
            raise _Refused(
                f"{target} is a folder; give a file name such as {target / 'results.csv'}"
            )
        if target.exists() and not args.overwrite:
            raise _Refused(f"{target} already exists: choose another name or pass --overwrite")
    if args.summary and args.summary.resolve() == args.out.resolve():
        raise _Refused("--summary and --out must be different files")


def _input_images(args: argparse.Namespace) -> list[Path]:
    """The image files named by, or found in, the inputs; refuses when there are none."""
    from napari_allbag.io.images import IMAGE_EXTENSIONS, find_images

    try:
        paths = find_images(args.inputs)
    except FileNotFoundError as error:
        raise _Refused(str(error)) from error
    if not paths:
        raise _Refused(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, args.inputs))}"
        )
    return paths


def _load_bundle(args: argparse.Namespace) -> tuple[Any, Any]:
    """The bundle on the chosen device and the pipeline options the command line asks for."""
    from napari_allbag.inference.engines import EngineError
    from napari_allbag.model.bundle import BundleError, load_bundle
    from napari_allbag.model.devices import DeviceError, select_device

    try:
        device = select_device(args.device)
        engine = checked_engine(args.engine, device, args.compile)
        bundle = load_bundle(args.bundle, device)
    except (BundleError, DeviceError, EngineError) as error:
        raise _Refused(str(error)) from error
    return bundle, pipeline_options(args, device, engine)


def _classify(
    args: argparse.Namespace, bundle: Any, paths: list[Path], options: Any, outputs: tuple
) -> PredictionRun:
    """Classify every image, writing rows (and CAMs, overlays) as each file finishes; keep rows
    on failure."""
    from napari_allbag.inference.gradcam import CamWriter
    from napari_allbag.inference.pipeline import predict_files, stream_shown_to
    from napari_allbag.progress import drive_with_bar

    writer, overlays = outputs  # the results CSV, and the overlay writer (or None)
    cams = CamWriter(bundle, args.cam) if args.cam else None
    keepers = [keeper for keeper in (cams, overlays) if keeper is not None]

    def sink(result: FilePredictions) -> None:
        _write_rows(writer, result)
        for keeper in keepers:
            keeper.write(result)

    try:
        segment_stream = stream_shown_to(keepers, overlays is not None) if keepers else None
        work = predict_files(bundle, paths, options, sink=sink, segment_stream=segment_stream)
        return drive_with_bar(work, quiet=args.quiet)
    except BaseException:
        kept = writer.abandon()
        if kept is not None:
            print(f"Cells classified so far were kept in {kept}", file=sys.stderr)
        raise


def summary_path(out: Path) -> Path:
    """Where the per-image summary goes without --summary: `<out stem>.images.csv` beside it."""
    return columns.summary_path(out)


def _write_rows(writer: AtomicCsv, result: FilePredictions) -> None:
    """One file's rows; never a NaN or infinite probability (the core refuses it, issue 13)."""
    try:
        rows = columns.result_rows(result)
    except columns.NonFiniteProbability as error:
        raise CommandError(str(error)) from error
    for values in rows:
        writer.write_row(values)


def _print_summary(result: PredictionRun, args: argparse.Namespace, overlays) -> None:
    files = result.files
    if len(files) <= MAX_FILES_SHOWN:
        width = min(60, max([len(str(f.path)) for f in files] + [4]))
        print(f"{'file':<{width}}  {'cells':>6}  {'ALL':>6}  {'ALL %':>6}  {'review':>6}")
        for item in files:
            if item.error:
                continue
            fraction = "" if item.all_fraction is None else f"{100 * item.all_fraction:.1f}"
            name = str(item.path)
            name = name if len(name) <= width else "..." + name[-(width - 3) :]
            print(
                f"{name:<{width}}  {item.cells:>6}  {item.n_all:>6}  {fraction:>6}  "
                f"{item.flagged:>6}"
            )
    elif not args.summary:
        print(f"({len(files)} files: pass --summary FILE for the per-file table)")
    cells, n_all = result.cells, result.n_all
    fraction = f"{100 * n_all / cells:.1f}%" if cells else "n/a"
    print(
        f"Total: {cells} cell(s) in {len(files) - len(result.errors)} image(s), {n_all} ALL "
        f"({fraction}), on {result.device} at {result.cells_per_second:.1f} cells/s -> {args.out}"
    )
    flagged = sum(f.flagged for f in files)
    if flagged:
        print(f"{flagged} cell(s) flagged for review (columns review, review_reason)")
    if args.summary:
        print(f"Per-file summary -> {args.summary}")
    if args.cam:
        print(f"Grad-CAM overlays -> {args.cam}")
    if overlays is not None:
        skipped = overlays.files - overlays.written - len(result.errors)
        note = f" ({skipped} could not be read again to draw on)" if skipped else ""
        print(f"Cell overlays of {overlays.written} image(s) -> {args.overlays}{note}")
    _print_segmentation_feedback(files)
    if result.errors:
        print(f"{len(result.errors)} file(s) could not be read and were skipped:", file=sys.stderr)
        for item in result.errors:
            print(f"  {item.path}: {item.error}", file=sys.stderr)


def _print_segmentation_feedback(files: list) -> None:
    """Per image: the mode guessed, no cell found, doubtful cells; then the counts."""
    from napari_allbag.segmentation.feedback import FeedbackTally

    tally = FeedbackTally()
    for item in files:
        if item.feedback is None:
            continue
        tally.add(item.feedback)
        line = item.feedback.line(str(item.path))
        if line:
            print(f"warning: {line}", file=sys.stderr)
    if tally.images:
        print(tally.text(), file=sys.stderr if tally.warned else sys.stdout)
