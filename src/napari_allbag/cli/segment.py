"""`napari-allbag segment INPUT... --out DIR`: segment image files, write crops and tables.

Parses the arguments, checks DIR and runs `segmentation.to_folder.segment_to_folder`, which
writes ``DIR/crops/<image stem>_cell<k>.png`` (stems that collide between inputs are told apart),
``DIR/cells.csv`` (one row per cell) and ``DIR/errors.csv`` (files that could not be read, and
why). Never writes into an input folder; refuses a non-empty DIR unless ``--overwrite``.
``--background`` picks the segmentation (auto: per image); TIFFs above ``--tile-above``
megapixels go in tiles. Per image, stderr says when the mode was guessed, no cell was found or
the cells look wrong; the summary counts each.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

from napari_allbag.cli.options import (
    add_background_option,
    add_tiling_options,
    claim_outputs,
    guarded,
)
from napari_allbag.io.images import IMAGE_EXTENSIONS, find_images
from napari_allbag.progress import drive_with_bar
from napari_allbag.segmentation.dark import SegmentationParams, default_workers
from napari_allbag.segmentation.feedback import FeedbackTally
from napari_allbag.segmentation.to_folder import Tiling, segment_to_folder


def register(subparsers) -> None:
    defaults = SegmentationParams()
    parser = subparsers.add_parser(
        "segment",
        help="segment cells in image files: crops, cells.csv, errors.csv",
        description=(
            "Find every cell (Otsu threshold, erosion, convex hull; on bright-field images on a "
            "stain channel, white cells only) in the images given, and write a square crop per "
            "cell plus a table of the cells. INPUT is files or folders (searched recursively "
            "for BMP, PNG, JPEG and TIFF files)."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder (created; must be empty unless --overwrite)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"processes to use (default: all cores, here {default_workers()})",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        default=defaults.crop_size,
        metavar="PX",
        help=f"side of the square crops (default {defaults.crop_size})",
    )
    parser.add_argument(
        "--erosion-size",
        type=int,
        default=defaults.erosion_size,
        metavar="PX",
        help=f"side of the erosion footprint (default {defaults.erosion_size})",
    )
    parser.add_argument(
        "--min-area",
        type=int,
        default=defaults.min_area,
        metavar="PX",
        help=f"smallest cell in pixels; smaller regions are debris (default {defaults.min_area})",
    )
    parser.add_argument(
        "--largest-only",
        action="store_true",
        help="keep only the largest cell of each image (C-NMC images hold one)",
    )
    add_background_option(parser)
    add_tiling_options(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty DIR, replacing earlier crops and tables",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return guarded("segment", _run, args)


def _run(args: argparse.Namespace, claims: ExitStack) -> int:
    try:
        params = SegmentationParams(
            crop_size=args.crop_size,
            erosion_size=args.erosion_size,
            min_area=args.min_area,
            largest_only=args.largest_only,
            background=args.background,
        )
        if args.workers is not None and args.workers < 1:
            raise ValueError("--workers must be at least 1")
        tiling = _tiling(args)
        paths = find_images(args.inputs)
        if not paths:
            raise FileNotFoundError(
                f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                f"{', '.join(map(str, args.inputs))}"
            )
        claim_outputs(claims, [args.out], args.inputs, folder=True)
        out_dir = _prepare_out_dir(args.out, args.inputs, args.overwrite)
    except (ValueError, OSError) as error:
        print(f"napari-allbag segment: {error}", file=sys.stderr)
        return 2

    try:
        summary = drive_with_bar(
            segment_to_folder(paths, out_dir, params, args.workers, tiling, say),
            quiet=args.quiet,
        )
    except OSError as error:
        print(
            f"napari-allbag segment: cannot write the results into {out_dir}: {error}",
            file=sys.stderr,
        )
        return 1
    print(
        f"{summary['cells']} cell(s) from {summary['segmented']} of {len(paths)} file(s) -> "
        f"{out_dir / 'cells.csv'}"
    )
    tally: FeedbackTally = summary["feedback"]
    if tally.images:
        print(tally.text(), file=sys.stderr if tally.warned else sys.stdout)
    if summary["failed"]:
        print(
            f"{summary['failed']} file(s) could not be read: see {out_dir / 'errors.csv'}",
            file=sys.stderr,
        )
    if summary["segmented"] == 0:
        print(
            "napari-allbag segment: none of the inputs could be read as an image", file=sys.stderr
        )
        return 1
    return 0


def _tiling(args: argparse.Namespace) -> Tiling:
    from napari_allbag.segmentation.tiles import DEFAULT_OVERLAP

    if args.tile_above < 0:
        raise ValueError(f"--tile-above must be 0 or more megapixels, got {args.tile_above}")
    if args.tile_size <= DEFAULT_OVERLAP:
        raise ValueError(
            f"--tile-size must exceed the tiles' overlap ({DEFAULT_OVERLAP} px), "
            f"got {args.tile_size}"
        )
    return Tiling(args.tile_above, args.tile_size)


def say(line: str | None) -> None:
    """One warning line on stderr, above any progress bar (nothing for None)."""
    if line:
        from tqdm import tqdm

        tqdm.write(f"warning: {line}", file=sys.stderr)


def _prepare_out_dir(out_dir: Path, inputs: list[str], overwrite: bool) -> Path:
    out_resolved = out_dir.resolve()
    for entry in inputs:
        source = Path(entry).resolve()
        if source.is_dir() and (out_resolved == source or source in out_resolved.parents):
            raise ValueError(
                f"--out {out_dir} is inside the input folder {entry}; choose an output folder "
                "outside the inputs (outputs must never be written among them)"
            )
        if overwrite and out_resolved in source.parents:
            raise ValueError(
                f"input {entry} is inside --out {out_dir}; --overwrite would replace files "
                "around it: choose another output folder"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {out_dir} is not empty; pass --overwrite to replace its crops and tables, "
                "or choose another folder"
            )
        _remove_old_crops(out_dir / "crops")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _remove_old_crops(crops_dir: Path) -> None:
    """Drop an earlier run's crops so the folder matches the new cells.csv."""
    if crops_dir.is_dir():
        for old in crops_dir.glob("*_cell*.png"):
            old.unlink()
