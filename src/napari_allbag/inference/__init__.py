"""Classifying cells with a bundle: batched crops (`classify`), images streamed through
segmentation and the ensemble (`predict`), the results table's columns (`columns`), and the
overlay PNG (`overlay`).

May import: `io`, `data`, `segmentation`, `model`, `progress`, `defaults`. `classify` and
`predict` import torch but no image or GUI library (benchmarks/gpu_bench.py relies on it).
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("CellPredictions", "EnsembleRunner", "classify_crops"), "classify"),
    **dict.fromkeys(
        ("FileSummary", "FilePredictions", "PredictionRun", "predict_files", "table_columns"),
        "predict",
    ),
    **dict.fromkeys(("CELL_COLUMNS", "RESULT_COLUMNS"), "columns"),
    **dict.fromkeys(("CellMark", "marks_from_table", "draw_overlay", "write_png"), "overlay"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
