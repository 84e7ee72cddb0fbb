"""`napari-allbag info BUNDLE [--json]`: print a bundle's model card.

The card says what the model learnt from (cells per class, subjects, the split), how well it did
on validation, the preprocessing it expects, the software that made it and what it is for. Reads
bundle.json alone (no torch, no weights), so it answers at once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_allbag.cli.options import fail


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="print the model card of a model bundle (training data, validation, intended use)",
        description=(
            "Print the model card stored in a model bundle: training data (cells per class, "
            "subjects, split), validation figures, calibration if any, backbone, preprocessing, "
            "software versions and intended use. Bundles older than model cards get one rebuilt "
            "from their bundle.json."
        ),
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="model bundle folder")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_allbag.model.card import format_model_card, read_model_card
    from napari_allbag.model.meta import BundleError

    try:
        card, stored = read_model_card(args.bundle)
    except BundleError as error:
        return fail("info", str(error))
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    print(format_model_card(card), end="")
    if not stored:
        print(
            "\n(This bundle predates model cards: the card above was rebuilt from its bundle.json; "
            "subjects and the synthetic-data flag may be unknown.)"
        )
    return 0
