"""`napari-allbag evaluate` (placeholder until its issue lands)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("napari-allbag evaluate: not implemented yet") or 1)
