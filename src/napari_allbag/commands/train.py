"""`napari-allbag train` (placeholder until its issue lands)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("napari-allbag train: not implemented yet") or 1)
