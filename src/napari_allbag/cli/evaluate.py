"""`napari-allbag evaluate BUNDLE DATA_DIR [--out report.json]`: the paper's Table 1 on a folder.

Parses the arguments, runs `evaluation.evaluate.evaluate_folder` and prints its report: every
annotated image is segmented with the bundle's parameters into the crop cache (shared with
training and earlier evaluations, so a second run only hashes the files) and its cell classified
by model-A, model-B, the combined model and the ensemble rule. Prints, side by side, precision,
recall, F1 and support for HEM and ALL with the support-weighted average, the confusion matrices,
and the accuracy per subject where subject ids are known; `--out` writes the same as JSON and,
beside it, as text (`report.txt` next to `report.json`). `--labels-csv FILE` reads a folder of
numbered images whose classes and subjects are in a CSV (the C-NMC test sets as they come, see
docs/reproduce.md); `--subjects-csv` is train's option of the same name (`--subjects`: hidden alias).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from napari_allbag.cli.options import (
    add_background_option,
    add_batch_size_option,
    add_cache_dir_option,
    add_device_option,
    add_engine_option,
    add_subjects_csv_option,
    add_trust_options,
    add_workers_option,
    checked_engine,
    claim_outputs,
    fail,
    guarded,
    pipeline_options,
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
            "accuracy per subject. --labels-csv reads a folder of numbered images whose "
            "classes are in a CSV, as the C-NMC preliminary and final test sets come."
        ),
    )
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="model bundle folder")
    parser.add_argument(
        "data_dir",
        type=Path,
        metavar="DATA_DIR",
        help="annotated folder (all/ and hem/), or with --labels-csv the folder of numbered images",
    )
    parser.add_argument(
        "--labels-csv",
        type=Path,
        default=None,
        metavar="FILE",
        help="classes (and subjects) of DATA_DIR's images from a CSV, as the C-NMC test sets come: "
        "columns Patient_ID, new_names, labels (1 = ALL, 0 = HEM; names matched in any case)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="JSON|DIR",
        help="a .json file: the report as JSON there and as text beside it (.txt); a folder "
        "(an existing one, or a name without .json): report.json, report.txt, the figures as "
        "PNG (confusion matrix, ROC, reliability, per subject) and a self-contained report.html",
    )
    add_subjects_csv_option(parser)
    add_device_option(parser)
    add_batch_size_option(parser)
    add_engine_option(parser)
    add_workers_option(parser, "segmenting images")
    add_cache_dir_option(parser)
    add_background_option(parser, default=None)
    add_trust_options(parser)
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


def annotated_set(args: argparse.Namespace):
    """DATA_DIR's cells: from --labels-csv (the C-NMC test sets) or from all/ and hem/ folders."""
    from napari_allbag.data.annotations import (
        AnnotationError,
        scan_annotated_folder,
        scan_labels_csv,
    )

    if args.labels_csv is not None:
        if args.subjects_csv is not None:
            raise AnnotationError(
                "--labels-csv already gives the subjects (its Patient_ID column): drop "
                "--subjects-csv"
            )
        return scan_labels_csv(args.labels_csv, args.data_dir)
    return scan_annotated_folder(
        args.data_dir, subjects_csv=args.subjects_csv, require_both_classes=False
    )


def run(args: argparse.Namespace) -> int:
    return guarded("evaluate", _run, args)


def _run(args: argparse.Namespace, claims: ExitStack) -> int:
    from napari_allbag.data.annotations import AnnotationError
    from napari_allbag.evaluation.evaluate import evaluate_folder
    from napari_allbag.evaluation.report import format_report
    from napari_allbag.evaluation.trust_report import format_trust
    from napari_allbag.inference.engines import EngineError
    from napari_allbag.inference.pipeline import decision_for
    from napari_allbag.model.bundle import BundleError, load_bundle
    from napari_allbag.model.devices import DeviceError, select_device
    from napari_allbag.progress import drive_with_bar

    if args.batch_size is not None and args.batch_size < 1:
        return _fail("--batch-size must be at least 1")
    if args.workers is not None and args.workers < 1:
        return _fail("--workers must be at least 1")
    if args.out is not None:
        if is_folder_out(args.out):
            claim_outputs(claims, [args.out], [args.data_dir], args.bundle, folder=True)
        else:
            claim_outputs(claims, report_files(args.out), [args.data_dir], args.bundle)
    for target in report_files(args.out):
        if target.exists() and not args.overwrite:
            return _fail(f"{target} already exists: choose another name or pass --overwrite")
    try:
        annotated = annotated_set(args)
    except AnnotationError as error:
        return _fail(str(error))
    try:
        device = select_device(args.device)
        engine = checked_engine(args.engine, device)
        bundle = load_bundle(args.bundle, device)
    except (BundleError, DeviceError, EngineError) as error:
        return _fail(str(error))

    started = time.perf_counter()
    options = pipeline_options(args, device, engine)
    try:
        decision_for(bundle, options)  # a threshold the bundle lacks: say so before any work
    except ValueError as error:
        return _fail(str(error))
    report = drive_with_bar(
        evaluate_folder(bundle, annotated, options, args.cache_dir), quiet=args.quiet
    )
    report["context"]["seconds"] = round(time.perf_counter() - started, 3)
    _print_segmentation_feedback(report["context"])
    text = format_report(report)
    if report["n_cells"] == 0:
        print(text)
        return _fail(f"no cell in {args.data_dir} could be segmented; nothing to evaluate")
    text += "\n\n" + format_trust(report)
    print(text)
    if report["seen_subjects"]["subjects"]:
        print(f"WARNING: {len(report['seen_subjects']['subjects'])} subject(s) of {args.data_dir} "
              "trained or validated this bundle (see above)", file=sys.stderr)  # fmt: skip
    if args.out is not None:
        _write_outputs(args, report, text)
    return 0


def is_folder_out(out: Path) -> bool:
    """`--out` names a report folder: an existing folder, or a name not ending in .json."""
    return out.is_dir() or out.suffix.lower() != ".json"


def report_files(out: Path | None) -> list[Path]:
    """The files `--out` will write that must not be replaced silently."""
    if out is None:
        return []
    if is_folder_out(out):
        return [out / "report.json", out / "report.txt", out / "report.html"]
    return [out, text_path(out)]


def _write_outputs(args: argparse.Namespace, report: dict, text: str) -> None:
    from napari_allbag.evaluation.trust_report import write_report_folder
    from napari_allbag.io.atomic import write_text_atomic

    json_path, *_ = report_files(args.out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    written = [json_path, text_path(json_path)]
    if is_folder_out(args.out):
        written.append(write_report_folder(args.out, report, args.bundle))
    write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    write_text_atomic(text_path(json_path), text + "\n")
    print("\nReport written to " + ", ".join(map(str, written)))


def _print_segmentation_feedback(context: dict) -> None:
    """Per-image segmentation warnings, then their summary line (stderr when any)."""
    warnings = context.get("segmentation_warnings") or []
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if context.get("segmentation_summary"):
        print(context["segmentation_summary"], file=sys.stderr if warnings else sys.stdout)
