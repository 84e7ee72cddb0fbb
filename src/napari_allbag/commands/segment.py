"""`napari-allbag segment` (placeholder until its issue lands)."""


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("napari-allbag segment: not implemented yet") or 1)
