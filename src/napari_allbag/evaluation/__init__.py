"""The paper's Table 1: metrics and confusion matrices for `evaluate` (`metrics`) and the
validation report written after training (`train_report`).

May import: `io`, `data`, `segmentation`, `model`, `inference`, `progress`, `defaults`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "METRIC_KEYS",
            "confusion_matrix",
            "classification_table",
            "per_subject_accuracy",
            "format_table",
            "ensemble_report",
        ),
        "metrics",
    ),
    "build_report": "train_report",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
