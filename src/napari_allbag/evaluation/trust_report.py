"""What `evaluate` adds to Table 1 so its figures can be trusted: the rule and decision used, the
review flags, per-subject figures, the cells of subjects the bundle learnt from scored apart, and
the report folder (`evaluate --out DIR`: PNG figures and one self-contained report.html).

Imports numpy, matplotlib and the package's model, inference and evaluation modules only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.evaluation.per_subject import SUBJECT_COLUMNS, per_subject_rows
from napari_allbag.evaluation.report import classification_table, segmentation_summary
from napari_allbag.model.rules import rule_p_all

CLASS_NAMES = ("hem", "all")


def _split_scores(labels: np.ndarray, predicted: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    if not mask.any():
        return {"cells": 0}
    table = classification_table(labels[mask], predicted[mask])
    return {
        "cells": int(mask.sum()),
        "accuracy": table["accuracy"],
        "weighted_f1": table["weighted_avg"]["f1"],
    }


def _seen_subjects(bundle: Any, subjects: list, labels, predicted) -> dict[str, Any]:
    """Subjects of the folder that trained or validated the bundle, and the scores apart."""
    trust = getattr(bundle, "trust", None)
    known = trust.known_subjects if trust is not None else {}
    seen = sorted({s for s in subjects if s is not None and s in known})
    mask = np.array([s in known for s in subjects], dtype=bool)
    return {
        "subjects": {s: known[s] for s in seen},
        "seen": _split_scores(labels, predicted, mask),
        "unseen": _split_scores(labels, predicted, ~mask),
        "bundle_records_subjects": bool(known),
    }


def add_trust_sections(report: dict[str, Any], bundle: Any, decision: Any, predictions: Any,
                       tta: bool = False) -> None:  # fmt: skip
    """Fill `report` (built on `predictions`' cells, in order) with the trust sections."""
    labels = np.array([CLASS_NAMES.index(c["label"]) for c in report["cells"]], dtype=np.int64)
    subjects = [c["subject"] for c in report["cells"]]
    predicted = np.asarray(predictions.labels, dtype=np.int64)
    raw = rule_p_all(predictions.probs, decision.rule) if len(predicted) else np.zeros(0)
    calibrated = predictions.columns()["p_all"]
    spread = predictions.spread
    for i, cell in enumerate(report["cells"]):
        cell["p_all_rule"] = round(float(raw[i]), 6)
        cell["p_all_ensemble"] = round(float(calibrated[i]), 6)
        cell["review"] = bool(predictions.flagged[i])
        cell["review_reason"] = str(predictions.columns()["review_reason"][i])
        if spread is not None:
            cell["tta_spread"] = round(float(spread[i]), 6)
    report["trust"] = {
        "rule": decision.rule,
        "decision": decision.mode,
        "threshold": decision.threshold,
        "calibrated": decision.calibrated,
        "tta": bool(tta),
        "flagged": int(predictions.flagged.sum()),
    }
    known = any(s is not None for s in subjects)
    report["subject_figures"] = per_subject_rows(labels, predicted, subjects) if known else []
    report["seen_subjects"] = _seen_subjects(bundle, subjects, labels, predicted)


def format_trust(report: dict[str, Any]) -> str:
    """The trust sections as text: decision, flags, the loud warning, per-subject figures."""
    trust, seen = report["trust"], report["seen_subjects"]
    lines = [
        f"Rule {trust['rule']}, decision {trust['decision']}"
        + (f" (P(ALL) >= {trust['threshold']:.4f})" if trust["decision"] == "threshold" else "")
        + (", calibrated" if trust["calibrated"] else ", uncalibrated")
        + (", TTA (8 views)" if trust["tta"] else "")
        + f"; {trust['flagged']} cell(s) flagged for review."
    ]
    if seen["subjects"]:
        names = ", ".join(f"{s} ({split})" for s, split in seen["subjects"].items())
        lines += [
            "",
            "!" * 78,
            f"WARNING: {len(seen['subjects'])} subject(s) of this folder trained or validated the "
            "bundle:",
            f"  {names}",
            "Their cells inflate the figures above. Scored apart:",
            _split_line("  unseen subjects", seen["unseen"]),
            _split_line("  seen subjects  ", seen["seen"]),
            "!" * 78,
        ]
    if report.get("subject_figures"):
        lines += ["", "Per subject: " + ", ".join(SUBJECT_COLUMNS)]
        for row in report["subject_figures"]:
            lines.append("  " + "  ".join(_text(row[c]) for c in SUBJECT_COLUMNS))
    return "\n".join(lines)


def _split_line(name: str, scores: dict[str, Any]) -> str:
    if not scores["cells"]:
        return f"{name}: no cells"
    return (
        f"{name}: {scores['cells']} cells, accuracy {scores['accuracy']:.3f}, "
        f"weighted F1 {scores['weighted_f1']:.3f}"
    )


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_report_folder(out_dir: str | Path, report: dict[str, Any], bundle_path: Any) -> Path:
    """`evaluate --out DIR`: confusion matrix, ROC (AUROC), reliability before/after scaling and
    per-subject PNGs, plus report.html with them all and the run's metadata; its path."""
    from napari_allbag.evaluation.figures import ReportData, render_figures, write_figures
    from napari_allbag.evaluation.report_html import (
        build_report_html,
        html_table,
        run_metadata,
        write_report_html,
    )

    cells = report["cells"]
    data = ReportData(
        y_true=np.array([CLASS_NAMES.index(c["label"]) for c in cells], dtype=np.int64),
        p_all=np.array([c["p_all_rule"] for c in cells]),
        y_pred=np.array([CLASS_NAMES.index(c["ensemble"]) for c in cells], dtype=np.int64),
        p_all_calibrated=np.array([c["p_all_ensemble"] for c in cells])
        if report["trust"]["calibrated"]
        else None,
        subjects=[c["subject"] for c in cells],
    )
    figures, numbers = render_figures(data)
    write_figures(out_dir, figures)
    report["auroc"] = numbers["auroc"]
    trust, seen = report["trust"], report["seen_subjects"]
    run = run_metadata(
        bundle_path,
        report["context"].get("data_dir"),
        cells=report["n_cells"],
        rule=trust["rule"],
        decision=trust["decision"],
        calibrated=trust["calibrated"],
        tta=trust["tta"],
        flagged_for_review=trust["flagged"],
        auroc="-" if numbers["auroc"] is None else f"{numbers['auroc']:.4f}",
        weighted_f1_ensemble=f"{report['weighted_f1']['ensemble']:.4f}",
        subjects_seen_in_training=", ".join(seen["subjects"]) or "none",
    )
    tables = {
        "Per subject": html_table(report.get("subject_figures") or [], SUBJECT_COLUMNS),
        "Subjects the bundle learnt from, scored apart": html_table(
            [{"subjects": name, **seen[name]} for name in ("unseen", "seen")]
        ),
    }
    warnings = report["context"].get("segmentation_warnings")
    if warnings:
        run["segmentation"] = segmentation_summary(report["context"])
        tables["Segmentation warnings"] = html_table([{"warning": w} for w in warnings])
    page = build_report_html("napari-allbag evaluation", run, figures, tables)
    return write_report_html(out_dir, page)
