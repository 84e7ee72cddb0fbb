"""The paper's two-stage bagging training (Liu & Long 2019, Sec. 2.3-2.5), as a progress generator.

    scan the annotated folder -> summary -> 7:3 split by subject -> crop cache (segment once)
    -> bagging sets A and B -> stage 1: model-A on A, model-B on B
    -> stage 2: the combined model on all training cells (frozen backbones: cached features)
    -> validation report (model-A, model-B, combined, ensemble) -> model bundle, log.csv, curves.png

`train(config)` yields `Progress` events (stages 'preprocess', 'stage1-A', 'stage1-B',
'features', 'stage2', 'report') and returns a `TrainResult`. Every epoch is checkpointed; with
`resume=True` a run continues from its last finished epoch and ends with the same weights as a run
that was never interrupted. No global state: everything lives in the run; only the main process
(rank 0) writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_allbag.annotations import AnnotationError, check_classes, scan_annotated_folder
from napari_allbag.bagging import describe_subsets, make_bagging_subsets
from napari_allbag.bundle import BundleError, save_bundle
from napari_allbag.checkpoint import write_json_atomic, write_text_atomic
from napari_allbag.crop_cache import CropCache, build_crop_cache, default_cache_dir
from napari_allbag.curves import render_curves_png, write_log
from napari_allbag.devices import DeviceError, release_memory, select_device
from napari_allbag.models import (
    BackboneConfig,
    BackboneWeightsError,
    CombinedHead,
    CombinedModel,
    Preprocess,
    Stage1Model,
    UnknownBackboneError,
    create_backbone,
    resolve_backbone,
)
from napari_allbag.progress import Progress
from napari_allbag.segmentation import SegmentationParams, default_workers
from napari_allbag.splits import split_train_val
from napari_allbag.train_config import (
    RunPaths,
    TrainConfig,
    TrainingError,
    prepare_run,
    save_run_config,
)
from napari_allbag.train_data import CropFeeder, FeatureBatches
from napari_allbag.train_features import FeatureSet, compute_features
from napari_allbag.train_loop import (
    StageOutcome,
    StageSettings,
    StageSpec,
    autocast_context,
    derive_seed,
    fit_stage,
)
from napari_allbag.train_report import build_report, format_report

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train", "STAGES"]

STAGES = ("preprocess", "stage1-A", "stage1-B", "features", "stage2", "report")


@dataclass
class TrainResult:
    """What a finished run produced (all files are in `run_dir`)."""

    run_dir: Path
    bundle_path: Path
    report: dict[str, Any]
    report_text: str
    log_path: Path
    curves_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Data:
    """The preprocessed cells of a run: crops, labels, subjects, the split."""

    cache: CropCache
    rows: np.ndarray  # crop-cache row of each usable cell
    labels: np.ndarray
    subjects: list[str | None]
    files: list[str]
    train: np.ndarray  # positions into rows/labels
    val: np.ndarray
    split_note: str


def default_train_batch_size(device: torch.device) -> int:
    """32 on CPU and MPS (Keras' default batch size), 64 on a CUDA GPU."""
    return 64 if device.type == "cuda" else 32


def autocast_dtype_for(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU supports it, else float16 (with a GradScaler); None on CPU/MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def train(config: TrainConfig) -> Generator[Progress, None, TrainResult]:
    """Run (or resume) a training run; see the module doc."""
    try:
        device = select_device(config.device)
    except DeviceError as error:
        raise TrainingError(str(error)) from error
    try:
        resolve_backbone(config.backbone, config.img_size)
    except UnknownBackboneError as error:
        raise TrainingError(str(error)) from error
    if not config.data_dir.is_dir():
        raise TrainingError(
            f"Annotated folder not found: {config.data_dir}. Choose the folder that holds the "
            "all/ and hem/ folders."
        )
    config, notes = prepare_run(config)
    if config.batch_size is None:
        config = replace(config, batch_size=default_train_batch_size(device))
        if config.is_main_process:
            save_run_config(config)
    batch_size = config.batch_size
    if device.type == "cuda":
        # fixed input sizes: let cuDNN pick its fastest kernels (a process-wide switch)
        torch.backends.cudnn.benchmark = True
    stage = ["preprocess"]
    try:
        return (yield from _train(config, device, notes, stage))
    except torch.cuda.OutOfMemoryError as error:
        smaller = max(2, batch_size // 2)
        raise TrainingError(
            f"Out of GPU memory in {stage[0]} with batch size {batch_size}. Continue with a "
            f"smaller batch: napari-allbag train {config.data_dir} --out {config.out_dir} --resume "
            f"--batch-size {smaller} (in the widget: a new run with batch size {smaller})."
        ) from error
    except (AnnotationError, UnknownBackboneError, BackboneWeightsError, BundleError) as error:
        raise TrainingError(str(error)) from error
    finally:
        release_memory(device)


def _train(
    config: TrainConfig, device: torch.device, notes: list[str], stage: list[str]
) -> Generator[Progress, None, TrainResult]:
    paths = RunPaths(config.out_dir)
    main = config.is_main_process
    backbone = resolve_backbone(config.backbone, config.img_size)  # fail early on a bad name
    if config.resume:
        notes.insert(0, f"resuming the run in {config.out_dir}")
    for note in notes:
        yield Progress(0, None, "preprocess", note, {"text": note})

    data = yield from _preprocess(config, paths)
    subset_a, subset_b = _bagging_sets(config, data)
    text = describe_subsets(subset_a, subset_b, data.labels[data.train])
    yield Progress(0, None, "preprocess", "bagging sets ready", {"text": text})

    dtype = autocast_dtype_for(device)
    preprocess = Preprocess(backbone)
    history: list[dict[str, Any]] = []
    outcomes: dict[str, StageOutcome] = {}
    workers = _loader_workers(config, device)

    def settings(name: str) -> StageSettings:
        def on_epoch_end(rows: list[dict[str, Any]]) -> None:
            write_log(paths.log, history + rows)

        return StageSettings(
            epochs=config.epochs,
            lr=config.lr,
            patience_lr=config.patience_lr,
            patience_stop=config.patience_stop,
            seed=config.seed,
            device=device,
            checkpoint_dir=paths.checkpoints,
            is_main_process=main,
            autocast_dtype=dtype,
            on_epoch_end=on_epoch_end,
        )

    val_feeder = CropFeeder(
        data.cache,
        data.rows[data.val],
        data.labels[data.val],
        config.batch_size,
        device,
        preprocess,
        workers=workers,
    )
    try:
        models: dict[str, Stage1Model] = {}
        for name, subset in (("stage1-A", subset_a), ("stage1-B", subset_b)):
            stage[0] = name
            model = _new_stage1_model(config, name, device)
            runner = _maybe_compiled(config, model)
            positions = data.train[subset.indices]
            feeder = CropFeeder(
                data.cache,
                data.rows[positions],
                data.labels[positions],
                config.batch_size,
                device,
                preprocess,
                augment=subset.augment,
                workers=workers,
            )
            try:
                spec = StageSpec(
                    name=name,
                    model=model,
                    train_batches=lambda epoch, random, feeder=feeder: feeder.batches(random),
                    val_batches=val_feeder.batches,
                    n_train_batches=feeder.n_batches,
                    forward=lambda m, x, runner=runner: runner(x),
                )
                outcomes[name] = yield from fit_stage(spec, settings(name))
            finally:
                feeder.close()
            history += outcomes[name].history
            models[name] = model
            _write_curves(main, paths, history)
        model_a, model_b = models["stage1-A"], models["stage1-B"]

        weights = torch.tensor(config.class_weights, dtype=torch.float32)
        if config.finetune_backbones:
            stage[0] = "stage2"
            combined = _new_combined_model(config, model_a, model_b, device)
            runner = _maybe_compiled(config, combined)
            positions = data.train
            feeder = CropFeeder(
                data.cache,
                data.rows[positions],
                data.labels[positions],
                config.batch_size,
                device,
                preprocess,
                workers=workers,
            )
            try:
                spec = StageSpec(
                    name="stage2",
                    model=combined,
                    train_batches=lambda epoch, random: feeder.batches(random),
                    val_batches=val_feeder.batches,
                    n_train_batches=feeder.n_batches,
                    forward=lambda m, x: runner(x),
                    class_weights=weights,
                )
                outcomes["stage2"] = yield from fit_stage(spec, settings("stage2"))
            finally:
                feeder.close()
            history += outcomes["stage2"].history
            stage[0] = "report"
            probs = yield from _ensemble_probs(model_a, model_b, combined, val_feeder, dtype)
            head_for_bundle: CombinedHead | CombinedModel = combined
        else:
            stage[0] = "features"
            train_set, val_set = yield from _cached_features(
                config,
                data,
                paths,
                model_a,
                model_b,
                preprocess,
                device,
                workers,
                val_feeder,
                dtype,
            )
            stage[0] = "stage2"
            head = _new_combined_head(config, model_a, model_b, device)
            train_batches = FeatureBatches(
                train_set.features_a,
                train_set.features_b,
                train_set.labels,
                config.batch_size,
                device,
            )
            val_batches = FeatureBatches(
                val_set.features_a,
                val_set.features_b,
                val_set.labels,
                max(config.batch_size, 256),
                device,
            )
            spec = StageSpec(
                name="stage2",
                model=head,
                train_batches=lambda epoch, random: train_batches.batches(random),
                val_batches=val_batches.batches,
                n_train_batches=train_batches.n_batches,
                forward=lambda m, x: m(*x),
                class_weights=weights,
            )
            outcomes["stage2"] = yield from fit_stage(spec, settings("stage2"))
            history += outcomes["stage2"].history
            stage[0] = "report"
            probs = _probs_from_features(model_a, model_b, head, val_set, device)
            head_for_bundle = head
    finally:
        val_feeder.close()

    stage[0] = "report"
    yield Progress(0, 3, "report", "validation report")
    report = build_report(
        data.labels[data.val],
        probs,
        subjects=[data.subjects[i] for i in data.val],
        files=[data.files[i] for i in data.val],
        extra={
            "split": data.split_note,
            "best_epochs": {name: o.best_epoch for name, o in outcomes.items()},
        },
    )
    report_text = format_report(report)
    if main:
        write_json_atomic(paths.report_json, report)
        write_text_atomic(paths.report_text, report_text)
        write_log(paths.log, history)
    yield Progress(1, 3, "report", "saving the model bundle", {"text": report_text})

    meta = _bundle_meta(config, backbone, data, outcomes, report)
    if main:
        overwrite = (paths.bundle / "bundle.json").is_file()
        save_bundle(paths.bundle, model_a, model_b, head_for_bundle, meta, overwrite=overwrite)
    yield Progress(2, 3, "report", "drawing the training curves")
    _write_curves(main, paths, history)
    if main:
        write_json_atomic(paths.root / "run.json", {"finished": True, "stages": list(STAGES)})
    yield Progress(3, 3, "report", f"done: bundle in {paths.bundle}")
    return TrainResult(
        run_dir=paths.root,
        bundle_path=paths.bundle,
        report=report,
        report_text=report_text,
        log_path=paths.log,
        curves_path=paths.curves,
        history=history,
        notes=notes,
    )


# ----------------------------------------------------------------------------- preprocessing


def segmentation_params(config: TrainConfig) -> SegmentationParams:
    values = {**config.segmentation, "crop_size": config.crop_size, "largest_only": True}
    try:
        return SegmentationParams.from_dict(values)
    except (TypeError, ValueError) as error:
        raise TrainingError(f"Invalid segmentation settings: {error}") from error


def _preprocess(config: TrainConfig, paths: RunPaths) -> Generator[Progress, None, _Data]:
    yield Progress(0, None, "preprocess", f"scanning {config.data_dir}")
    annotated = scan_annotated_folder(config.data_dir, config.subjects_csv)
    params = segmentation_params(config)
    cache_dir = config.cache_dir if config.cache_dir is not None else default_cache_dir()
    workers = config.workers if config.workers is not None else default_workers()
    building = build_crop_cache(annotated.paths, params, cache_dir, workers)
    while True:
        try:
            event = next(building)
        except StopIteration as stop:
            cache: CropCache = stop.value
            break
        step = event.stage.split(":", 1)[-1].strip()
        yield Progress(event.done, event.total, "preprocess", f"{step} {event.message}".strip())
    annotated = annotated.without(cache.errors_by_path)
    try:
        check_classes(annotated)
    except AnnotationError as error:
        raise TrainingError(f"{error} (after leaving out the images without a cell)") from error
    try:
        split = split_train_val(annotated.items, config.val_fraction, config.seed)
    except ValueError as error:
        raise TrainingError(f"Cannot split {config.data_dir} for validation: {error}") from error

    labels = annotated.labels
    summary = annotated.summary()
    summary["crop_cache"] = {
        "folder": str(cache.folder),
        "crop_size": cache.crop_size,
        "reused": cache.reused,
        "notes": {str(p): n for p, n in cache.notes_by_path.items()},
    }
    summary["split"] = {
        "note": split.note,
        "by_subject": split.by_subject,
        "train": _class_counts(labels[split.train]),
        "val": _class_counts(labels[split.val]),
        "train_subjects": list(split.train_subjects),
        "val_subjects": list(split.val_subjects),
    }
    text = (
        annotated.summary_text()
        + f"\n  {split.note}\n  "
        + (f"training: {summary['split']['train']}, validation: {summary['split']['val']}")
    )
    if config.is_main_process:
        write_json_atomic(paths.summary_json, summary)
        write_text_atomic(paths.summary_text, text + "\n")
    yield Progress(1, 1, "preprocess", "data ready", {"text": text})
    return _Data(
        cache=cache,
        rows=cache.rows(annotated.paths),
        labels=labels,
        subjects=annotated.subjects,
        files=[str(p) for p in annotated.paths],
        train=np.asarray(split.train, dtype=np.int64),
        val=np.asarray(split.val, dtype=np.int64),
        split_note=split.note,
    )


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    return {"all": int((labels == 1).sum()), "hem": int((labels == 0).sum())}


def _bagging_sets(config: TrainConfig, data: _Data):
    try:
        return make_bagging_subsets(data.labels[data.train], config.seed)
    except ValueError as error:
        raise TrainingError(f"Too few training cells in {config.data_dir}: {error}") from error


def _loader_workers(config: TrainConfig, device: torch.device) -> int:
    if config.workers is not None:
        return max(0, int(config.workers))
    if device.type != "cuda":
        return 0
    return max(0, min(8, default_workers() - 1))


# ----------------------------------------------------------------------------- models


@contextlib.contextmanager
def _seeded(config: TrainConfig, *parts: object):
    """Seed torch's generator for a model's initialisation, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, *parts))
        yield


def _place(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if device.type == "cuda":
        return module.to(device=device, memory_format=torch.channels_last)
    return module.to(device)


def _new_stage1_model(config: TrainConfig, name: str, device: torch.device) -> Stage1Model:
    with _seeded(config, name, "init"):
        model = Stage1Model(
            create_backbone(config.backbone, config.pretrained, config.weights_path)
        )
    return _place(model, device)


def _maybe_compiled(config: TrainConfig, model: torch.nn.Module):
    """`torch.compile(model)` when asked (it shares the model's weights), else the model."""
    return torch.compile(model) if config.compile else model


def _new_combined_head(config, model_a, model_b, device) -> CombinedHead:
    with _seeded(config, "stage2", "init"):
        head = CombinedHead(model_a.num_features, model_b.num_features)
    return head.to(device)


def _new_combined_model(config, model_a, model_b, device) -> CombinedModel:
    head = _new_combined_head(config, model_a, model_b, device)
    combined = CombinedModel(copy.deepcopy(model_a), copy.deepcopy(model_b), head)
    for parameter in combined.parameters():
        parameter.requires_grad_(True)
    return _place(combined, device)


# ----------------------------------------------------------------------------- stage 2 helpers


def _cached_features(
    config, data, paths, model_a, model_b, preprocess, device, workers, val_feeder, dtype
):
    """Features of the training and validation cells, from the run folder or computed now."""
    sets = []
    for what, positions in (("train", data.train), ("val", data.val)):
        path = paths.features / f"{what}.safetensors"
        labels = torch.as_tensor(data.labels[positions])
        found = FeatureSet.load(path, labels)
        if found is None:
            feeder = (
                val_feeder
                if what == "val"
                else CropFeeder(
                    data.cache,
                    data.rows[positions],
                    data.labels[positions],
                    config.batch_size,
                    device,
                    preprocess,
                    workers=workers,
                )
            )
            try:
                found = yield from compute_features(
                    model_a, model_b, feeder, "features", f"{what} cells", dtype
                )
            finally:
                if feeder is not val_feeder:
                    feeder.close()
            if config.is_main_process:
                found.save(path)
        else:
            yield Progress(1, 1, "features", f"{what} features cached")
        sets.append(found)
    return sets[0], sets[1]


def _probs_from_features(model_a, model_b, head, features: FeatureSet, device) -> np.ndarray:
    """(N, 3, 2) validation probabilities of model-A, model-B and the combined head."""
    model_a.eval()
    model_b.eval()
    head.eval()
    with torch.no_grad():
        fa = features.features_a.to(device)
        fb = features.features_b.to(device)
        logits = torch.stack(
            [model_a.forward_head(fa), model_b.forward_head(fb), head(fa, fb)], dim=1
        )
    return logits.float().softmax(dim=-1).cpu().numpy()


def _ensemble_probs(model_a, model_b, combined, feeder: CropFeeder, dtype):
    """(N, 3, 2) validation probabilities with the fine-tuned combined model's own backbones."""
    for module in (model_a, model_b, combined):
        module.eval()
    parts = []
    total = feeder.n_batches
    for done, (pixels, _labels) in enumerate(feeder.batches(), 1):
        with torch.no_grad(), autocast_context(feeder.device, dtype):  # not across the yield
            logits = torch.stack([model_a(pixels), model_b(pixels), combined(pixels)], dim=1)
        parts.append(logits.float().softmax(dim=-1).cpu())
        yield Progress(done, total, "report", "validation predictions")
    return torch.cat(parts).numpy()


# ----------------------------------------------------------------------------- outputs


def _write_curves(main: bool, paths: RunPaths, history: list[dict[str, Any]]) -> None:
    if main and history:
        render_curves_png(history, paths.curves)


def _bundle_meta(config, backbone: BackboneConfig, data: _Data, outcomes, report) -> dict[str, Any]:
    training = {
        "config": json.loads(json.dumps(config.to_dict())),
        "data_dir": str(config.data_dir),
        "cells": {
            "train": _class_counts(data.labels[data.train]),
            "val": _class_counts(data.labels[data.val]),
        },
        "split": data.split_note,
        "stages": {
            name: {
                "epochs": outcome.extra.get("last_epoch"),
                "best_epoch": outcome.best_epoch,
                "best_val_loss": outcome.best_val_loss,
                "stopped_early": outcome.stopped_early,
            }
            for name, outcome in outcomes.items()
        },
        "finetune_backbones": config.finetune_backbones,
    }
    metrics = {
        "ensemble_weighted_f1": report["weighted_f1"]["ensemble"],
        "validation_cells": report["cells"],
        "validation": {
            name: {
                "weighted_f1": table["weighted_avg"]["f1"],
                "accuracy": table["accuracy"],
                "per_class": table["per_class"],
                "confusion_matrix": table["confusion_matrix"],
            }
            for name, table in report["tables"].items()
        },
    }
    # Training keeps the largest cell of each (one-cell) C-NMC image; a bundle classifies every
    # cell an image holds, so it carries the same crop settings without that restriction.
    return {
        "backbone": backbone,
        "segmentation": replace(segmentation_params(config), largest_only=False),
        "training": training,
        "metrics": metrics,
    }
