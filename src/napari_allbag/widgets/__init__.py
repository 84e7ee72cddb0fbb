"""napari dock widgets: Segment, Classify, Train and the Cell table. They gather parameters, run a core generator
in napari's worker thread through one shared lifecycle (`base.WorkerControls`: start, progress,
Cancel, errors, no second Run while one runs) and put its results into layers.

May import: napari, Qt, magicgui and every core subpackage (`demo` and down); nothing imports it
except napari (through napari.yaml) and `demo.viewer`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    "SegmentWidget": "segment",
    "ClassifyWidget": "classify",
    "TrainWidget": "train",
    "CellTableWidget": "cell_table",
    **dict.fromkeys(("WorkerControls", "start_worker"), "base"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
