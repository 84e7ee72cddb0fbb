"""Classifying cells with a bundle: the one pipeline every front end calls (`pipeline`: load ->
segment -> classify), batched crops (`classify`), files streamed through segmentation and the
ensemble (`predict`), the results table's columns (`columns`), the overlay PNG (`overlay`), test-time augmentation
(`tta`), review flags (`review`) and Grad-CAM heatmaps (`gradcam`).

May import: `io`, `data`, `segmentation`, `model`, `progress`, `defaults`. `classify` and
`predict` import torch but no image or GUI library (benchmarks/gpu_bench.py relies on it);
`pipeline` imports the segmentation inside the functions that segment.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        ("CellPredictions", "EnsembleRunner", "PendingBatch", "check_crops", "classify_crops"),
        "classify",
    ),
    **dict.fromkeys(
        ("FileSummary", "FilePredictions", "PredictionRun", "stream_predictions", "table_columns"),
        "predict",
    ),
    **dict.fromkeys(
        (
            "PipelineOptions",
            "ImagePredictions",
            "CachedPredictions",
            "segmentation_params",
            "classify_cells",
            "classify_image",
            "classify_labels",
            "classify_segmented",
            "classify_files_cached",
            "predict_files",
        ),
        "pipeline",
    ),
    **dict.fromkeys(("dihedral_views", "classify_tta", "iter_classify_tta"), "tta"),
    **dict.fromkeys(("ReviewPolicy", "review_flags"), "review"),
    **dict.fromkeys(("grad_cam", "ensemble_grad_cam", "overlay_heatmap"), "gradcam"),
    **dict.fromkeys(("CELL_COLUMNS", "RESULT_COLUMNS"), "columns"),
    **dict.fromkeys(
        ("CellMark", "marks_from_table", "draw_overlay", "write_png", "OverlayWriter"), "overlay"
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
