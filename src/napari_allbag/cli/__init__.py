"""The `napari-allbag` command: `main` (the dispatcher), `options` (shared options), and one module
per subcommand (`segment`, `predict`, `train`, `evaluate`, `demo`), each with `register(subparsers)`.

May import: every core subpackage, only inside the functions that run a command, so `--help`
never loads torch. No napari or Qt (except through `demo.viewer` for `demo --napari`).
The console script is `napari_allbag.cli.main:main`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {"SUBCOMMANDS": "main", "build_parser": "main"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
