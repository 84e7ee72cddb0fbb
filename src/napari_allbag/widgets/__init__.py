"""napari dock widgets: Segment, Classify and Train. They gather parameters, run a core generator
in napari's worker thread (`worker.start_worker`) and put its results into layers.

May import: napari, Qt, magicgui and every core subpackage (`demo` and down); nothing imports it
except napari (through napari.yaml) and `demo.viewer`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    "SegmentWidget": "segment",
    "ClassifyWidget": "classify",
    "TrainWidget": "train",
    "start_worker": "worker",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
