"""`napari-allbag evaluate BUNDLE DATA_DIR [--out report.json]`: the paper's Table 1 on a folder.

Every annotated image is segmented with the bundle's parameters into the crop cache (shared with
training and earlier evaluations, so a second run only hashes the files) and its cell classified
by model-A, model-B, the combined model and the ensemble rule. Prints, side by side, precision,
recall, F1 and support for HEM and ALL with the support-weighted average, the confusion matrices,
and the accuracy per subject where subject ids are known; `--out` writes the same as JSON and,
beside it, as text (`report.txt` next to `report.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.cli.options import (
    add_batch_size_option,
    add_cache_dir_option,
    add_device_option,
    add_workers_option,
    fail,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Table 1 (precision, recall, F1 per class) of a model bundle on an annotated folder",
        description=(
            "Classify every cell of an annotated folder (all/ and hem/ folders, or *_all / *_hem "
            "file names) with a model bundle and report precision, recall, F1-score and support "
            "for HEM and ALL and their support-weighted average, for model-A, model-B, the "
            "combined model and the ensemble rule side by side, with confusion matrices and the "
            "accuracy per subject."
        ),
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="model bundle folder")
    parser.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="annotated folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="JSON",
        help="write the report as JSON here, and as text beside it (.txt)",
    )
    parser.add_argument(
        "--subjects", type=Path, default=None, metavar="CSV", help="CSV with columns file, subject"
    )
    add_device_option(parser)
    add_batch_size_option(parser)
    add_workers_option(parser, "segmenting images")
    add_cache_dir_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    return fail("evaluate", message)


def text_path(json_path: Path) -> Path:
    """Where the text report goes beside the JSON one."""
    return (
        json_path.with_suffix(".txt")
        if json_path.suffix.lower() == ".json"
        else Path(f"{json_path}.txt")
    )


def run(args: argparse.Namespace) -> int:
    from napari_allbag.data.annotations import AnnotationError, scan_annotated_folder
    from napari_allbag.io.atomic import write_text_atomic
    from napari_allbag.model.bundle import BundleError, load_bundle
    from napari_allbag.model.devices import DeviceError, select_device
    from napari_allbag.progress import drive_with_bar

    if args.batch_size is not None and args.batch_size < 1:
        return _fail("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 1:
        return _fail("--workers must be at least 1")
    if args.out is not None:
        if args.out.is_dir():
            return _fail(
                f"{args.out} is a folder; give a file name such as {args.out / 'report.json'}"
            )
        for target in (args.out, text_path(args.out)):
            if target.exists() and not args.overwrite:
                return _fail(f"{target} already exists: choose another name or pass --overwrite")
    try:
        annotated = scan_annotated_folder(
            args.data_dir, subjects_csv=args.subjects, require_both_classes=False
        )
    except AnnotationError as error:
        return _fail(str(error))
    try:
        device = select_device(args.device)
        bundle = load_bundle(args.bundle, device)
    except (BundleError, DeviceError) as error:
        return _fail(str(error))

    started = time.perf_counter()
    report = drive_with_bar(
        evaluate_folder(bundle, annotated, args.batch_size, device, args.workers, args.cache_dir),
        quiet=args.quiet,
    )
    report["seconds"] = round(time.perf_counter() - started, 3)
    if report["n_cells"] == 0:
        print(format_evaluation(report))
        return _fail(f"no cell in {args.data_dir} could be segmented; nothing to evaluate")
    text = format_evaluation(report)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        write_text_atomic(text_path(args.out), text + "\n")
        print(f"\nReport written to {args.out} and {text_path(args.out)}")
    return 0


def evaluate_folder(
    bundle: Any,
    annotated: Any,
    batch_size: int | None = None,
    device: Any = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """Crop (through the cache) and classify an `AnnotatedSet`; returns the report dict.

    A progress generator: yields `Progress` while preprocessing and classifying.
    """
    from napari_allbag.evaluation.metrics import ensemble_report
    from napari_allbag.inference.classify import classify_crops
    from napari_allbag.segmentation.crop_cache import build_crop_cache
    from napari_allbag.segmentation.dark import SegmentationParams, default_workers

    params = bundle.segmentation
    if isinstance(params, dict):
        params = SegmentationParams.from_dict(params)
    workers = default_workers() if workers is None else workers
    cache = yield from build_crop_cache(annotated.paths, params, cache_dir, workers)
    rows = np.flatnonzero(cache.ok)
    predictions = yield from classify_crops(bundle, cache.crops, batch_size, device)
    items = [annotated.items[i] for i in rows]
    report = ensemble_report(
        [item.label_index for item in items],
        predictions.probs[rows],
        [item.subject for item in items],
    )
    report.update(
        {
            "bundle": str(getattr(bundle, "path", "") or ""),
            "data_dir": str(annotated.root),
            "device": str(device) if device is not None else str(getattr(bundle, "device", "")),
            "segmentation": params.to_dict(),
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
                    "ensemble": ("hem", "all")[int(predictions.labels[row])],
                }
                for item, row in zip(items, rows, strict=True)
            ],
        }
    )
    return report


def format_evaluation(report: dict[str, Any]) -> str:
    """The terminal / .txt form of an evaluation report."""
    from napari_allbag.evaluation.metrics import format_report

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
