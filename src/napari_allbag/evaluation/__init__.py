"""The paper's Table 1 as one report (`report`): metrics, confusion matrices and accuracy per
subject for model-A, model-B, the combined model and the ensemble rule, built alike for a bundle
evaluated on an annotated folder (`evaluate`, what the CLI's `evaluate` runs) and for the
validation after training (one JSON shape, docs/report-format.md).

May import: `io`, `data`, `segmentation`, `model`, `inference`, `progress`, `defaults`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        (
            "METRIC_KEYS",
            "REPORT_KINDS",
            "REPORT_MODELS",
            "REPORT_VERSION",
            "build_report",
            "classification_table",
            "confusion_matrix",
            "format_report",
            "format_table",
            "per_subject_accuracy",
        ),
        "report",
    ),
    "evaluate_folder": "evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
