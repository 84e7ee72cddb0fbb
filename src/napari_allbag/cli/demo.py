"""`napari-allbag demo [--out DIR] [--quick] [--napari]`: the whole method on generated cells.

Writes a synthetic annotated set, trains the two-stage bagging ensemble on it with a small
backbone (nothing is downloaded), prints the validation report (the paper's Table 1), segments
and classifies the shipped sample field of cells, and writes everything to DIR (see
`napari_allbag.demo.run`). `--napari` then opens the viewer with the sample field, the four
widgets docked, the demo bundle chosen in the Classify widget and the field classified (the Cell
table lists its cells); given a DIR that already holds a
finished demo, it opens that one without training again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

from napari_allbag.cli.options import add_device_option, fail
from napari_allbag.progress import retold


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train and run the ensemble end to end on generated cells (no data, no download)",
        description=(
            "Generate a C-NMC-like annotated set of synthetic cells, train the two-stage bagging "
            "ensemble on it with a small backbone, report its validation figures (Table 1), then "
            "segment and classify the sample field of cells. Writes the model bundle, the report "
            "and curves, results.csv and overlay.png to DIR. The demo model learns synthetic "
            "cells: it is no diagnostic model."
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="new or empty folder for the outputs (default: ./allbag-demo-<date>-<time>); with "
        "--napari, a folder holding a finished demo is opened as it is",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest run that goes through every step (seconds; the model learns little)",
    )
    parser.add_argument(
        "--napari",
        action="store_true",
        help="open napari afterwards with the sample field, the widgets and the demo bundle",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="with --napari: open the viewer with this model bundle, without running the demo",
    )
    add_device_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    return fail("demo", message)


def run(args: argparse.Namespace) -> int:
    from napari_allbag.cli.qt_binding import missing_qt_message
    from napari_allbag.demo.run import DemoError, check_out_dir, default_out_dir, is_finished_demo

    if args.napari and (no_qt := missing_qt_message()):
        return _fail(no_qt)  # before the demo trains for minutes
    if args.bundle is not None:
        if not args.napari:
            return _fail("--bundle only goes with --napari (it opens the viewer with that bundle)")
        if args.out is not None:
            return _fail("give either --bundle (open a bundle) or --out (run or open a demo)")
        return _open_viewer(args.bundle)
    if args.napari and args.out is not None and is_finished_demo(args.out):
        print(f"{args.out} holds a finished demo: opening it in napari.")
        return _open_viewer(args.out / "bundle", args.out)

    out_dir = args.out if args.out is not None else default_out_dir()
    try:
        check_out_dir(out_dir)
    except DemoError as error:
        return _fail(str(error))
    status = _run_demo(out_dir, args)
    if status != 0 or not args.napari:
        return status
    return _open_viewer(out_dir / "bundle", out_dir)


def _run_demo(out_dir: Path, args: argparse.Namespace) -> int:
    from napari_allbag.demo.run import NOT_DIAGNOSTIC, DemoError, format_summary, run_demo
    from napari_allbag.model.devices import DeviceError
    from napari_allbag.progress import drive_with_bar
    from napari_allbag.training.run import TrainingError

    print(f"napari-allbag demo -> {out_dir}")
    print(NOT_DIAGNOSTIC)
    try:
        result = drive_with_bar(
            _printing_texts(run_demo(out_dir, quick=args.quick, device=args.device), args.quiet),
            quiet=args.quiet,
        )
    except (DemoError, DeviceError, TrainingError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        print(
            f"\nInterrupted: {out_dir} holds an unfinished demo. Delete it, or run the demo "
            "again with another --out.",
            file=sys.stderr,
        )
        return 130
    print()
    print(result.report_text)
    print(format_summary(result))
    return 0


def _printing_texts(work: Generator, quiet: bool) -> Generator:
    """Pass progress events on with only their short figures, printing the texts they carry
    (data summary, notes) above the bars instead of squeezing them into a bar."""
    from tqdm import tqdm

    def short_figures(event):
        metrics = event.metrics or {}
        text = metrics.get("text")
        if text is not None and not quiet and event.stage != "report":
            tqdm.write(str(text))  # the report itself is printed at the end
        figures = {
            key: value
            for key, value in metrics.items()
            if key != "text" and isinstance(value, (int, float, str)) and len(str(value)) < 40
        }
        return replace(event, metrics=figures) if figures != metrics else event

    return retold(work, short_figures)


def _open_viewer(bundle_path: Path, demo_dir: Path | None = None) -> int:
    from napari_allbag.model.bundle import BundleError, read_bundle_meta

    try:
        read_bundle_meta(bundle_path)
    except BundleError as error:
        return _fail(str(error))
    from napari_allbag.demo.viewer import show_demo

    show_demo(bundle_path, demo_dir)
    return 0
