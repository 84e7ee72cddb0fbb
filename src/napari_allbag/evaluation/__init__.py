"""The paper's Table 1 as one report (`report`): metrics, confusion matrices and accuracy per
subject for model-A, model-B, the combined model and the ensemble rule, built alike for a bundle
evaluated on an annotated folder (`evaluate`, what the CLI's `evaluate` runs) and for the
validation after training (one JSON shape, docs/report-format.md); per-subject figures
(`per_subject`), the report's PNG figures (`figures`) and its self-contained HTML page
(`report_html`).

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
    **dict.fromkeys(("SUBJECT_COLUMNS", "per_subject_rows"), "per_subject"),
    **dict.fromkeys(("ReportData", "render_figures", "write_figures"), "figures"),
    **dict.fromkeys(("run_metadata", "build_report_html", "write_report_html"), "report_html"),
    "evaluate_folder": "evaluate",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
