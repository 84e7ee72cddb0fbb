"""`python -m napari_allbag` runs the command line (also what torchrun launches)."""

from napari_allbag.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
