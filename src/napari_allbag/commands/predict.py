"""`napari-allbag predict` (placeholder until its issue lands)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("napari-allbag predict: not implemented yet") or 1)
