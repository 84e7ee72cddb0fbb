"""The paper's Table 1 of a bundle on an annotated folder (what `napari-allbag evaluate` prints).

Every annotated image goes through the crop cache (shared with training, so a second run only
hashes the files) and the one pipeline (`inference.pipeline.classify_files_cached`); its cell is
scored for model-A, model-B, the combined model and the ensemble rule (`metrics.ensemble_report`).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

from napari_allbag.evaluation.metrics import ensemble_report, format_report
from napari_allbag.inference.pipeline import DEFAULT_OPTIONS, PipelineOptions, classify_files_cached
from napari_allbag.model.networks import CLASS_NAMES
from napari_allbag.progress import Progress


def evaluate_folder(
    bundle: Any,
    annotated: Any,
    options: PipelineOptions = DEFAULT_OPTIONS,
    cache_dir: str | os.PathLike | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Crop (through the cache) and classify an `AnnotatedSet`; returns the report dict.

    A progress generator: yields `Progress` while preprocessing and classifying.
    """
    found = yield from classify_files_cached(bundle, annotated.paths, options, cache_dir)
    predictions, rows = found.predictions, found.rows
    items = [annotated.items[i] for i in rows]
    report = ensemble_report(
        [item.label_index for item in items],
        predictions.probs[rows],
        [item.subject for item in items],
    )
    device = options.device if options.device is not None else getattr(bundle, "device", "")
    cache = found.cache
    report.update(
        {
            "bundle": str(getattr(bundle, "path", "") or ""),
            "data_dir": str(annotated.root),
            "device": str(device),
            "segmentation": found.params.to_dict(),
            "crop_cache": str(cache.folder),
            "annotations": annotated.summary(),
            "skipped": [{"file": str(p), "reason": why} for p, why in cache.errors_by_path.items()],
            "notes": [{"file": str(p), "note": note} for p, note in cache.notes_by_path.items()],
            "cells": [
                {
                    "file": str(item.path),
                    "label": item.label,
                    "subject": item.subject,
                    "p_all": [round(float(p), 6) for p in predictions.p_all[row]],
                    "ensemble": CLASS_NAMES[int(predictions.labels[row])],
                }
                for item, row in zip(items, rows, strict=True)
            ],
        }
    )
    return report


def format_evaluation(report: dict[str, Any]) -> str:
    """The terminal / .txt form of an evaluation report."""
    annotations = report["annotations"]
    lines = [
        f"Evaluation of {report['bundle']} on {report['data_dir']}",
        f"  {report['n_cells']} cells evaluated ({annotations['per_class']['all']} ALL and "
        f"{annotations['per_class']['hem']} HEM images found)",
    ]
    skipped = report["skipped"]
    if skipped:
        lines.append(f"  {len(skipped)} image(s) left out (no crop):")
        lines += [f"    {entry['file']}: {entry['reason']}" for entry in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"    ... ({len(skipped) - 10} more in the JSON report)")
    if report["notes"]:
        lines.append(
            f"  {len(report['notes'])} image(s) held more than one cell: the largest was used"
        )
    for key, title in (("unlabelled", "without a class"), ("unreadable", "unreadable")):
        if annotations[key]:
            lines.append(f"  {len(annotations[key])} file(s) {title} were not evaluated")
    if report["n_cells"]:
        lines += ["", format_report(report)]
    return "\n".join(lines)
