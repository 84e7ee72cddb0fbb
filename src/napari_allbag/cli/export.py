"""`napari-allbag export BUNDLE --format bioimageio --out MODEL.zip`: share a model with other tools.

Writes the bundle's ensemble as a bioimage.io model package (model RDF 0.5): one graph from a
uint8 crop to the three models' class probabilities, as TorchScript (and ONNX with --weights),
test tensors, the model card and citations in its README. The Otsu crop stays in napari-allbag.
Needs the optional extra: pip install 'napari-allbag[bioimageio]'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_allbag.cli.options import fail

FORMATS = ("bioimageio",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model bundle as a bioimage.io model package (.zip)",
        description=(
            "Write a model bundle as a bioimage.io model package: the ensemble as one graph "
            "(uint8 RGB crop in, the three models' class probabilities out), test input and "
            "output tensors, and a README with the model card and the citations. The crops "
            "must still be made by napari-allbag's segmentation (napari-allbag segment)."
        ),
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="model bundle folder")
    parser.add_argument("--format", choices=FORMATS, default="bioimageio", help="package format")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL.zip", help="package")
    parser.add_argument(
        "--weights",
        default="torchscript",
        metavar="FORMATS",
        help="comma-separated weight formats: torchscript, onnx (default: torchscript)",
    )
    parser.add_argument(
        "--author", action="append", default=[], metavar="NAME", help="author (repeatable)"
    )
    parser.add_argument("--github-user", default=None, help="GitHub user of the first author")
    parser.add_argument(
        "--license", default=None, metavar="SPDX", help="SPDX licence id (default: CC-BY-4.0)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_allbag.model.bundle import BundleError
    from napari_allbag.model.export_bioimageio import (
        DEFAULT_LICENSE,
        ExportError,
        ExportSettings,
        export_bioimageio,
    )
    from napari_allbag.progress import drive_with_bar

    try:
        settings = ExportSettings(
            out=args.out,
            weight_formats=tuple(f.strip() for f in args.weights.split(",") if f.strip()),
            authors=tuple(args.author),
            github_user=args.github_user,
            license=args.license or DEFAULT_LICENSE,
            overwrite=args.overwrite,
        )
        out = drive_with_bar(export_bioimageio(args.bundle, settings), quiet=args.quiet)
    except (ExportError, BundleError) as error:
        return fail("export", str(error))
    print(f"bioimage.io package written: {out}")
    if not args.author:
        print("  no --author given: the package names an unnamed author; add --author NAME.")
    print("  check it with: bioimageio test " + str(out) + "  (pip install bioimageio.core)")
    return 0
