"""The `napari-allbag` command: one subcommand per module in `napari_allbag.cli`."""

from __future__ import annotations

import argparse
import importlib
import sys

from napari_allbag import __version__
from napari_allbag.io.allocator import tune_allocator

#: Subcommand name -> module in napari_allbag.cli exposing `register(subparsers)`.
SUBCOMMANDS = ("segment", "predict", "train", "evaluate", "demo", "info", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-allbag",
        description="Segment, classify (ALL vs HEM) and train the Liu & Long bagging ensemble.",
    )
    parser.add_argument("--version", action="version", version=f"napari-allbag {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"napari_allbag.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    tune_allocator()  # freed image buffers reused, not handed back to the kernel per cell
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
