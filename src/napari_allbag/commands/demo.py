"""`napari-allbag demo` (placeholder until its issue lands)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("napari-allbag demo: not implemented yet") or 1)
