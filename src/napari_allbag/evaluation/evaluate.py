"""The paper's Table 1 of a bundle on an annotated folder (what `napari-allbag evaluate` prints).

Every annotated image goes through the crop cache (shared with training, so a second run only
hashes the files) and the one pipeline (`inference.pipeline.classify_files_cached`); its cell is
scored for model-A, model-B, the combined model and the ensemble rule in the one report
(`report.build_report`, kind "evaluation"; its text: `report.format_report`), with the rule,
decision, TTA and calibration of the options and the bundle, review flags, per-subject figures
and the cells of subjects the bundle learnt from scored apart (`trust_report`).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from napari_allbag.evaluation.report import build_report
from napari_allbag.evaluation.trust_report import add_trust_sections
from napari_allbag.inference.pipeline import (
    DEFAULT_OPTIONS,
    PipelineOptions,
    classify_files_cached,
    decision_for,
)
from napari_allbag.progress import Progress


def evaluate_folder(
    bundle: Any,
    annotated: Any,
    options: PipelineOptions = DEFAULT_OPTIONS,
    cache_dir: str | os.PathLike | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Crop (through the cache) and classify an `AnnotatedSet`; returns its report (the shape of
    docs/report-format.md, kind "evaluation").

    A progress generator: yields `Progress` while preprocessing and classifying.
    """
    found = yield from classify_files_cached(bundle, annotated.paths, options, cache_dir)
    predictions, rows = found.predictions, found.rows
    items = [annotated.items[i] for i in rows]
    device = options.device if options.device is not None else getattr(bundle, "device", "")
    cache = found.cache
    cells = predictions.take(rows)
    report = build_report(
        "evaluation",
        [item.label_index for item in items],
        cells.probs,
        files=[item.path for item in items],
        subjects=[item.subject for item in items],
        ensemble=cells.labels,
        context={
            "bundle": str(getattr(bundle, "path", "") or ""),
            "data_dir": str(annotated.root),
            "device": str(device),
            "segmentation": found.params.to_dict(),
            "crop_cache": str(cache.folder),
            "annotations": annotated.summary(),
            "skipped": [{"file": str(p), "reason": why} for p, why in cache.errors_by_path.items()],
            "notes": [{"file": str(p), "note": note} for p, note in cache.notes_by_path.items()],
            **segmentation_feedback(cache),
        },
    )
    add_trust_sections(report, bundle, decision_for(bundle, options), cells, options.tta)
    return report


def segmentation_feedback(cache: Any) -> dict[str, Any]:
    """The per-image warnings (mode guessed, no cell, doubtful cells) and their summary line."""
    from napari_allbag.segmentation.feedback import FeedbackTally

    tally = FeedbackTally()
    warnings = []
    for path, feedback in cache.feedback_by_path.items():
        tally.add(feedback)
        line = feedback.line(str(path))
        if line:
            warnings.append(line)
    return {"segmentation_warnings": warnings, "segmentation_summary": tally.text()}
