"""The paper's Table 1: a bundle evaluated on an annotated folder (`evaluate`, what the CLI's
`evaluate` runs), metrics and confusion matrices (`metrics`) and the validation report written
after training (`train_report`), per-subject figures (`per_subject`), the report's PNG figures
(`figures`) and its self-contained HTML page (`report_html`).

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
    **dict.fromkeys(("SUBJECT_COLUMNS", "per_subject_rows"), "per_subject"),
    **dict.fromkeys(("ReportData", "render_figures", "write_figures"), "figures"),
    **dict.fromkeys(("run_metadata", "build_report_html", "write_report_html"), "report_html"),
    **dict.fromkeys(("evaluate_folder", "format_evaluation"), "evaluate"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
