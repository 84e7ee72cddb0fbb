"""The paper's Table 1: a bundle evaluated on an annotated folder (`evaluate`, what the CLI's
`evaluate` runs), metrics and confusion matrices (`metrics`) and the validation report written
after training (`train_report`).

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
    **dict.fromkeys(("evaluate_folder", "format_evaluation"), "evaluate"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
