"""The built-in demo: synthetic cells -> a small trained bundle -> a classified field (`run`),
and `demo --napari`'s viewer (`viewer`, the only module outside `widgets/` that imports napari).

May import: everything below it (`training` and down). `run` imports no napari or Qt.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        ("DemoError", "DemoSettings", "DemoResult", "run_demo", "format_summary"), "run"
    ),
    **dict.fromkeys(("open_demo", "show_demo"), "viewer"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
