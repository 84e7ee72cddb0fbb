"""The built-in demo: the whole method end to end on generated cells, with no data and no download.

    write a synthetic annotated set (all/, hem/, a few subjects)   -> DIR/data/
    train the two-stage bagging ensemble on it (small backbone)    -> DIR/bundle/, report, curves
    segment and classify the shipped field of cells with it        -> DIR/results.csv, overlay.png

`run_demo(out_dir)` is a progress generator (it yields `Progress`, returns a `DemoResult`), so the
CLI shows it with progress bars and a GUI could run it in a worker. The demo model learns
*synthetic* cells: it shows the pipeline working, it is no diagnostic model.

DIR at the end:

    bundle/        the model bundle (load it in the Classify widget, or `napari-allbag predict`)
    report.txt     the validation report (the paper's Table 1 for model-A, model-B, combined,
    report.json    ensemble) and confusion matrices, as text and JSON
    curves.png     training curves; log.csv the per-epoch figures behind them
    results.csv    one row per cell found in the sample field: where it is, each model's P(ALL),
                   the ensemble's label and confidence, and the generator's true class
    overlay.png    the sample field with each cell's outline, label and confidence
    demo.json      what ran (settings, device, time) and the headline figures
    data/          the generated annotated set the model was trained on
    training/      the training run's settings and data summary (config.json, summary.txt)
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.io.atomic import replace_atomic, write_json_atomic, write_text_atomic
from napari_allbag.progress import Progress

#: Written last: a folder holding it is a finished demo.
DEMO_FILE = "demo.json"
#: Trainer files moved up from DIR/training to DIR when training ends.
MOVED_OUTPUTS = ("bundle", "report.txt", "report.json", "curves.png", "log.csv")
#: The trainer's bulky intermediate files, deleted when the demo ends.
INTERMEDIATE = ("checkpoints", "features")
CROP_CACHE = ".crop-cache"
FIELD_SOURCE = "sample_data/field_of_cells.png"
NOT_DIAGNOSTIC = (
    "The demo model learnt synthetic cells drawn by napari_allbag.data.synthetic. It shows the method "
    "working end to end; it is no diagnostic model and says nothing about real blood cells."
)
OVERLAY_CAPTION = "napari-allbag demo model (trained on synthetic cells, not for diagnosis)"


class DemoError(ValueError):
    """The demo cannot run (e.g. its output folder is not empty); the message says what to do."""


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is: the generated set, the backbone and the training length."""

    name: str
    cells_per_class: int
    subjects_per_class: int
    image_size: int  # side of the generated C-NMC-like images
    backbone: str
    img_size: int  # crop size and the backbone's input size
    epochs: int
    batch_size: int
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Two CPU cores, well under 5 minutes (see docs/user-guide.md for measured times).
CPU_SETTINGS = DemoSettings("cpu", 80, 8, 256, "resnet10t", 64, 10, 32)
#: A GPU: a larger backbone at a larger size, more cells and epochs; still a few minutes at most.
GPU_SETTINGS = DemoSettings("gpu", 240, 4, 256, "resnet18", 128, 12, 64)
#: `--quick` and the tests: the smallest run that still goes through every step.
QUICK_SETTINGS = DemoSettings("quick", 18, 3, 128, "test_resnet", 48, 2, 16)


def demo_settings(quick: bool = False, device: Any = None) -> DemoSettings:
    """The settings for a run: quick, or sized for the device (CUDA gets the larger demo)."""
    if quick:
        return QUICK_SETTINGS
    kind = getattr(device, "type", str(device or "cpu").split(":")[0])
    return GPU_SETTINGS if kind == "cuda" else CPU_SETTINGS


@dataclass
class DemoResult:
    """What a finished demo wrote and found (every path is inside `out_dir`)."""

    out_dir: Path
    data_dir: Path
    bundle_path: Path
    report_text_path: Path
    report_json_path: Path
    curves_path: Path
    log_path: Path
    results_path: Path
    overlay_path: Path
    report: dict[str, Any]
    report_text: str
    cells: int  # cells found in the sample field
    n_all: int  # of them, classified ALL
    matches_truth: int  # of them, whose label equals the generator's true class
    settings: DemoSettings
    device: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def weighted_f1(self) -> dict[str, float]:
        """Validation weighted F1 per model (model-A, model-B, combined, ensemble)."""
        return dict(self.report.get("weighted_f1", {}))

    @property
    def paths(self) -> dict[str, Path]:
        return {
            "bundle": self.bundle_path,
            "report": self.report_text_path,
            "curves": self.curves_path,
            "results": self.results_path,
            "overlay": self.overlay_path,
            "data": self.data_dir,
        }


def default_out_dir(parent: str | Path = ".") -> Path:
    """A new folder name `allbag-demo-<date>-<time>` in `parent` (a suffix if it exists)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"allbag-demo-{stamp}"
    candidate, number = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{number}")
        number += 1
    return candidate


def is_finished_demo(folder: str | Path) -> bool:
    """Whether `folder` holds a finished demo (its demo.json and bundle)."""
    folder = Path(folder)
    return (folder / DEMO_FILE).is_file() and (folder / "bundle" / "bundle.json").is_file()


def check_out_dir(out_dir: str | Path) -> Path:
    """The output folder, if it is new or empty; a `DemoError` saying what to do otherwise."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoError(f"{out_dir} is a file; give a new folder for the demo (--out DIR).")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if is_finished_demo(out_dir):
            raise DemoError(
                f"{out_dir} already holds a finished demo. Open it in napari with "
                f"`napari-allbag demo --out {out_dir} --napari`, or choose a new folder."
            )
        raise DemoError(
            f"{out_dir} is not empty, and the demo never writes into a folder holding other "
            "files. Choose a new or empty folder (--out DIR), or leave --out out to get a new one."
        )
    return out_dir


def run_demo(
    out_dir: str | Path,
    quick: bool = False,
    device: str | None = None,
    settings: DemoSettings | None = None,
    workers: int | None = None,
) -> Generator[Progress, None, DemoResult]:
    """Generate, train, evaluate, segment and classify the sample field; see the module doc.

    `device` None picks the best available (CUDA, MPS, CPU); `settings` None picks
    `demo_settings(quick, device)`. `workers`: segmentation processes (None: one process on CPU,
    where the set is small, all cores on a GPU machine).
    """
    from napari_allbag.model.devices import device_description, select_device

    started = time.perf_counter()
    out_dir = check_out_dir(out_dir).resolve()  # absolute: bundle.json records where data was
    torch_device = select_device(device)
    settings = settings or demo_settings(quick, torch_device)
    if workers is None:
        workers = 0 if torch_device.type == "cpu" else None
    out_dir.mkdir(parents=True, exist_ok=True)

    data_dir = yield from _generate(out_dir / "data", settings)
    trained = yield from _train(out_dir, data_dir, settings, str(torch_device), workers)
    paths = _collect_outputs(out_dir, trained.run_dir)
    field = yield from _classify_field(paths["bundle"], torch_device)

    yield Progress(0, 2, "writing results", "results.csv and overlay.png")
    results_path = out_dir / "results.csv"
    write_text_atomic(results_path, results_csv(field))
    from napari_allbag.inference.overlay import draw_overlay, marks_from_table, write_png

    flagged = field["predictions"].flagged  # as results.csv's review column and predict's
    marks = marks_from_table(field["table"], field["labels"], field["confidence"], flagged)
    overlay = draw_overlay(field["image"], field["labels_image"], marks, OVERLAY_CAPTION)
    overlay_path = write_png(out_dir / "overlay.png", overlay)
    yield Progress(1, 2, "writing results", "demo.json")

    result = DemoResult(
        out_dir=out_dir,
        data_dir=data_dir,
        bundle_path=paths["bundle"],
        report_text_path=paths["report.txt"],
        report_json_path=paths["report.json"],
        curves_path=paths["curves.png"],
        log_path=paths["log.csv"],
        results_path=results_path,
        overlay_path=overlay_path,
        report=trained.report,
        report_text=trained.report_text,
        cells=len(field["labels"]),
        n_all=int(sum(label == "all" for label in field["labels"])),
        matches_truth=int(
            sum(p == t for p, t in zip(field["labels"], field["truth"], strict=True) if t)
        ),
        settings=settings,
        device=device_description(torch_device),
        seconds=time.perf_counter() - started,
        notes=list(trained.notes),
    )
    write_json_atomic(out_dir / DEMO_FILE, demo_summary(result))
    yield Progress(2, 2, "writing results", "done")
    return result


# ----------------------------------------------------------------------------- the steps


def _generate(data_dir: Path, settings: DemoSettings) -> Generator[Progress, None, Path]:
    """Write the synthetic annotated set (C-NMC names, all/ and hem/, a stain per subject)."""
    from napari_allbag.data.synthetic import write_annotated_folder

    n = settings.cells_per_class
    yield Progress(0, 1, "generating cells", f"{n} ALL + {n} HEM synthetic cells")
    write_annotated_folder(
        data_dir, n, n, settings.subjects_per_class, settings.seed, settings.image_size
    )
    yield Progress(1, 1, "generating cells", f"written to {data_dir}")
    return data_dir


def _train(out_dir: Path, data_dir: Path, settings: DemoSettings, device: str, workers):
    """The trainer on the generated set, from scratch (pretrained=False: nothing is downloaded)."""
    from napari_allbag.training.run import TrainConfig, train

    config = TrainConfig(
        data_dir=data_dir,
        out_dir=out_dir / "training",
        backbone=settings.backbone,
        img_size=settings.img_size,
        crop_size=settings.img_size,
        pretrained=False,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=settings.seed,
        device=device,
        workers=workers,
        cache_dir=out_dir / CROP_CACHE,
        synthetic_data=True,
    )
    return (yield from _named_for_demo(train(config), config.out_dir, out_dir))


def _named_for_demo(work, run_dir: Path, out_dir: Path):
    """The trainer's events, naming where its outputs end up: they move from DIR/training/ to
    DIR/ when training ends (`_collect_outputs`), so "bundle in DIR/training/bundle" would name a
    folder that no longer exists."""
    from dataclasses import replace

    before, after = str(run_dir / "bundle"), str(out_dir / "bundle")
    try:
        event = next(work)
        while True:
            if before in event.message:
                event = replace(event, message=event.message.replace(before, after))
            event = work.send((yield event))
    except StopIteration as done:
        return done.value
    finally:
        work.close()  # cancelled (the widget's quit): the trainer stops at its next yield


def _collect_outputs(out_dir: Path, run_dir: Path) -> dict[str, Path]:
    """Move the bundle, report and curves up to DIR; drop checkpoints, features and the cache."""
    paths = {}
    for name in MOVED_OUTPUTS:
        source, target = run_dir / name, out_dir / name
        if source.exists():
            replace_atomic(source, target)
        paths[name] = target
    for name in INTERMEDIATE:
        shutil.rmtree(run_dir / name, ignore_errors=True)
    shutil.rmtree(out_dir / CROP_CACHE, ignore_errors=True)
    return paths


def field_image() -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The shipped sample field of cells (RGB) and the generator's truth for each cell."""
    from napari_allbag.data.samples import field_of_cells

    data, attributes, _kind = field_of_cells()[0]
    return np.asarray(data), list(attributes["metadata"]["cells"])


def true_classes(table: dict[str, np.ndarray], truth: list[dict[str, Any]]) -> list[str]:
    """The generator's class of each segmented cell: the truth cell whose box holds its centroid."""
    classes = []
    for row in range(len(table["cell_id"])):
        y, x = float(table["centroid_row"][row]), float(table["centroid_col"][row])
        found = ""
        for cell in truth:
            top, left, bottom, right = cell["bbox"]
            if top <= y < bottom and left <= x < right:
                found = str(cell["label"])
                break
        classes.append(found)
    return classes


def _classify_field(bundle_path: Path, device) -> Generator[Progress, None, dict[str, Any]]:
    """Segment the sample field with the bundle's parameters and classify every cell."""
    from napari_allbag.inference.pipeline import PipelineOptions, classify_image
    from napari_allbag.model.bundle import load_bundle
    from napari_allbag.model.devices import release_memory

    yield Progress(0, None, "sample field", "loading the bundle")
    bundle = load_bundle(bundle_path, device)
    image, truth = field_image()
    try:
        found = yield from classify_image(
            bundle, image, PipelineOptions(device=device), FIELD_SOURCE
        )
    finally:
        del bundle
        release_memory(device)
    predictions = found.predictions
    return {
        "image": image,
        "labels_image": found.labels,
        "table": found.table,
        "predictions": predictions,
        "labels": [str(name) for name in predictions.label_names],
        "confidence": predictions.confidence,
        "truth": true_classes(found.table, truth),
        "message": found.message,
    }


# ----------------------------------------------------------------------------- outputs


def result_columns() -> tuple[str, ...]:
    """Columns of results.csv: those of `napari-allbag predict`, then the generator's class."""
    from napari_allbag.inference.columns import RESULT_COLUMNS

    return (*RESULT_COLUMNS, "true_class")


def results_csv(field: dict[str, Any]) -> str:
    """results.csv as text: one row per cell of the field (same columns as `predict`, + truth)."""
    columns = result_columns()
    table = field["table"]
    predicted = field["predictions"].columns()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in range(len(field["labels"])):
        values = {"source": FIELD_SOURCE, "true_class": field["truth"][row]}
        for name in columns:
            if name in values:
                continue
            source = predicted if name in predicted else table
            values[name] = _csv_value(source[name][row])
        writer.writerow([values[name] for name in columns])
    return out.getvalue()


def _csv_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def demo_summary(result: DemoResult) -> dict[str, Any]:
    """demo.json: settings, device, time, headline figures and the files."""
    return {
        "finished": True,
        "note": NOT_DIAGNOSTIC,
        "settings": result.settings.to_dict(),
        "device": result.device,
        "seconds": round(result.seconds, 1),
        "validation_weighted_f1": result.weighted_f1,
        "validation_cells": result.report.get("n_cells"),
        "field": {
            "cells": result.cells,
            "n_all": result.n_all,
            "n_hem": result.cells - result.n_all,
            "matches_truth": result.matches_truth,
        },
        "files": {
            name: str(path.relative_to(result.out_dir)) for name, path in result.paths.items()
        },
    }


def format_summary(result: DemoResult) -> str:
    """The closing lines the CLI prints: headline figures, the files, and what the model is not."""
    f1 = result.weighted_f1
    others = ", ".join(
        f"{name} {f1[name]:.2f}" for name in ("model-A", "model-B", "combined") if name in f1
    )
    lines = [
        f"Demo finished in {result.seconds:.0f} s on {result.device} "
        f"({result.settings.backbone} at {result.settings.img_size} px, "
        f"{result.settings.epochs} epochs per stage).",
        f"  Validation ({result.report.get('n_cells', '?')} synthetic cells of unseen subjects): "
        f"weighted F1 of the ensemble {f1.get('ensemble', float('nan')):.2f} ({others})",
        f"  Sample field: {result.cells} cells found, {result.n_all} ALL, "
        f"{result.cells - result.n_all} HEM ({result.matches_truth} of {result.cells} match "
        "the class the generator drew)",
        "",
        "Files:",
    ]
    width = max(len(name) for name in result.paths)
    lines += [f"  {name:<{width}}  {path}" for name, path in result.paths.items()]
    lines += [
        "",
        "Note: " + NOT_DIAGNOSTIC,
        "",
        "Next:",
        f"  napari-allbag demo --out {result.out_dir} --napari     # look at it in napari",
        f"  napari-allbag predict {result.bundle_path} IMAGES... --out results.csv",
    ]
    return "\n".join(lines)
