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

Data-parallel under torchrun: `train(config, dist)` with a `distributed.Distributed` context.
Rank 0 settles the settings and builds the crop cache while the others wait (they then open the
same cache); every stage trains a DistributedDataParallel model on DistributedSampler shares of
the global batches (SyncBatchNorm on GPUs when each process's batch is small); the stage-2
features are computed by all ranks, each a share, and gathered; only rank 0 writes the run
folder. See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
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
from napari_allbag.crop_cache import CROPS_FILE, CropCache, build_crop_cache, default_cache_dir
from napari_allbag.curves import render_curves_png, write_log
from napari_allbag.devices import DeviceError, release_memory, select_device
from napari_allbag.distributed import (
    Distributed,
    DistributedError,
    fault_point,
    is_distributed_failure,
    local_batch_size,
    lost_contact,
)
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
    order_seed,
)
from napari_allbag.train_report import build_report, format_report

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train", "STAGES"]

STAGES = ("preprocess", "stage1-A", "stage1-B", "features", "stage2", "report")

#: SyncBatchNorm ("auto") when each process's batch is below this: from 32 images on (Keras'
#: default batch, the paper's), a process's own BatchNorm statistics are as good as one GPU's.
SYNC_BATCHNORM_BELOW = 32


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


def train(
    config: TrainConfig, dist: Distributed | None = None
) -> Generator[Progress, None, TrainResult]:
    """Run (or resume) a training run; see the module doc.

    `dist`: this process's place in a data-parallel run (`distributed.process_group()`); None
    for a single process.
    """
    dist = dist if dist is not None else Distributed.single()
    if dist.is_distributed:
        config = replace(config, rank=dist.rank, world_size=dist.world_size)
        device = dist.device
    else:
        try:
            device = select_device(config.device)
        except DeviceError as error:
            raise TrainingError(str(error)) from error
    try:
        resolve_backbone(config.backbone, config.img_size)
    except UnknownBackboneError as error:
        raise TrainingError(str(error)) from error
    stage = ["preprocess"]
    try:
        config, notes = dist.share(
            lambda: _settle_config(config, device, dist.world_size),
            encode=lambda settled: {"config": settled[0].to_dict(), "notes": settled[1]},
            decode=lambda shared: (_adopt_config(shared["config"], config), shared["notes"]),
            where="reading the run folder (rank 0)",
        )
    except Exception as error:
        if dist.is_distributed and is_distributed_failure(error):
            raise lost_contact(error, "the start", dist.rank, dist.timeout_s) from error
        raise
    batch_size = config.batch_size
    local_batch_size(batch_size, dist.world_size)  # a clear error when it does not divide
    if device.type == "cuda":
        # fixed input sizes: let cuDNN pick its fastest kernels (a process-wide switch)
        torch.backends.cudnn.benchmark = True
    try:
        return (yield from _train(config, device, notes, stage, dist))
    except DistributedError:
        raise
    except torch.cuda.OutOfMemoryError as error:
        smaller = max(2, batch_size // 2)
        raise TrainingError(
            f"Out of GPU memory in {stage[0]} with batch size {batch_size}. Continue with a "
            f"smaller batch: napari-allbag train {config.data_dir} --out {config.out_dir} --resume "
            f"--batch-size {smaller} (in the widget: a new run with batch size {smaller})."
        ) from error
    except (AnnotationError, UnknownBackboneError, BackboneWeightsError, BundleError) as error:
        raise TrainingError(str(error)) from error
    except Exception as error:
        if dist.is_distributed and is_distributed_failure(error):
            raise lost_contact(error, stage[0], dist.rank, dist.timeout_s) from error
        raise
    finally:
        release_memory(device)


def _settle_config(
    config: TrainConfig, device: torch.device, world_size: int
) -> tuple[TrainConfig, list[str]]:
    """Check the data and run folders, start or resume the run, fix the batch size (rank 0)."""
    if not config.data_dir.is_dir():
        raise TrainingError(
            f"Annotated folder not found: {config.data_dir}. Choose the folder that holds the "
            "all/ and hem/ folders."
        )
    config, notes = prepare_run(config)
    changes: dict[str, Any] = {}
    if config.batch_size is None:
        # the global batch: the one-process default for each process
        changes["batch_size"] = default_train_batch_size(device) * world_size
    if config.world_size != world_size:
        changes["world_size"] = world_size
    if changes:
        config = replace(config, **changes)
        if config.is_main_process:
            save_run_config(config)
    return config, notes


def _adopt_config(shared: dict[str, Any], own: TrainConfig) -> TrainConfig:
    """Rank 0's settled settings, with this process's own place and device."""
    settled = TrainConfig.from_dict(shared)
    return replace(
        settled,
        rank=own.rank,
        world_size=own.world_size,
        device=own.device,
        workers=own.workers,
    )


def _train(
    config: TrainConfig,
    device: torch.device,
    notes: list[str],
    stage: list[str],
    dist: Distributed,
) -> Generator[Progress, None, TrainResult]:
    paths = RunPaths(config.out_dir)
    main = config.is_main_process
    backbone = resolve_backbone(config.backbone, config.img_size)  # fail early on a bad name
    if config.resume:
        notes.insert(0, f"resuming the run in {config.out_dir}")
    if dist.is_distributed:
        notes.append(
            f"data-parallel training on {dist.world_size} processes ({dist.backend}), global "
            f"batch {config.batch_size} = {local_batch_size(config.batch_size, dist.world_size)} "
            "per process"
        )
    if config.parallel_models and not dist.is_distributed:
        notes.append(
            "--parallel-models needs several processes (torchrun or --gpus N); model-A and "
            "model-B are trained one after the other"
        )
    for note in notes:
        yield Progress(0, None, "preprocess", note, {"text": note})

    data = yield from dist.share_work(
        _preprocess(config, paths),
        encode=_data_to_json,
        decode=_data_from_json,
        stage="preprocess",
        where="preprocessing (rank 0 builds the crop cache)",
    )
    subset_a, subset_b = _bagging_sets(config, data)
    text = describe_subsets(subset_a, subset_b, data.labels[data.train])
    yield Progress(0, None, "preprocess", "bagging sets ready", {"text": text})

    dtype = autocast_dtype_for(device)
    preprocess = Preprocess(backbone)
    history: list[dict[str, Any]] = []
    outcomes: dict[str, StageOutcome] = {}
    workers = _loader_workers(config, device, dist.local_world_size)
    batch = local_batch_size(config.batch_size, dist.world_size)
    sync_bn = _use_sync_batchnorm(config, dist, device, batch)

    def settings(name: str, team: Distributed = dist, after_epoch=None) -> StageSettings:
        """A stage's settings; `team`: the processes that train it (all, or a subgroup)."""

        def on_epoch_end(rows: list[dict[str, Any]]) -> None:
            write_log(paths.log, history + rows)

        def each_epoch(stage: str, epoch: int) -> None:
            fault_point(stage, epoch, dist.rank)
            if after_epoch is not None:
                after_epoch(stage, epoch)

        return StageSettings(
            epochs=config.epochs,
            lr=config.lr,
            patience_lr=config.patience_lr,
            patience_stop=config.patience_stop,
            seed=config.seed,
            device=device,
            checkpoint_dir=paths.checkpoints,
            is_main_process=team.is_main,
            autocast_dtype=dtype,
            on_epoch_end=on_epoch_end if main else None,
            dist=team,
            after_epoch=each_epoch,
        )

    def fit_stage1(name: str, subset, team: Distributed, team_val_feeder: CropFeeder, **extra):
        """Train model-A or model-B on `team`; returns (model, outcome)."""
        team_batch = local_batch_size(config.batch_size, team.world_size)
        team_sync_bn = _use_sync_batchnorm(config, team, device, team_batch)
        model = _new_stage1_model(config, name, device)
        runner, eval_runner = _runners(config, model, team, device, team_sync_bn)
        positions = data.train[subset.indices]
        feeder = CropFeeder(
            data.cache,
            data.rows[positions],
            data.labels[positions],
            team_batch,
            device,
            preprocess,
            augment=subset.augment,
            workers=workers,
            sampler=team.sampler(len(positions), order_seed(config.seed, name)),
        )
        try:
            spec = StageSpec(
                name=name,
                model=model,
                train_batches=lambda epoch, random: feeder.batches(random),
                val_batches=team_val_feeder.batches,
                n_train_batches=feeder.n_batches,
                forward=lambda m, x: runner(x),
                eval_forward=lambda m, x: eval_runner(x),
            )
            outcome = yield from fit_stage(spec, settings(name, team, **extra))
        finally:
            feeder.close()
        if team_sync_bn:
            model = _without_sync_batchnorm(model, _stage1_skeleton(config), device)
        return model, outcome

    val_positions = dist.shard(data.val)  # this rank's share, gathered again where needed
    val_feeder = CropFeeder(
        data.cache,
        data.rows[val_positions],
        data.labels[val_positions],
        batch,
        device,
        preprocess,
        workers=workers,
    )
    try:
        models: dict[str, Stage1Model] = {}
        subsets = {"stage1-A": subset_a, "stage1-B": subset_b}
        if config.parallel_models and dist.is_distributed:
            found = yield from _stage1_side_by_side(
                config, data, dist, device, preprocess, workers, subsets, fit_stage1, stage
            )
            for name, (model, outcome) in found.items():
                models[name], outcomes[name] = model, outcome
                history += outcome.history
            _write_curves(main, paths, history)
            if main:
                write_log(paths.log, history)
        else:
            for name, subset in subsets.items():
                stage[0] = name
                models[name], outcomes[name] = yield from fit_stage1(name, subset, dist, val_feeder)
                history += outcomes[name].history
                _write_curves(main, paths, history)
        model_a, model_b = models["stage1-A"], models["stage1-B"]

        weights = torch.tensor(config.class_weights, dtype=torch.float32)
        if config.finetune_backbones:
            stage[0] = "stage2"
            combined = _new_combined_model(config, model_a, model_b, device)
            runner, eval_runner = _runners(config, combined, dist, device, sync_bn)
            positions = data.train
            feeder = CropFeeder(
                data.cache,
                data.rows[positions],
                data.labels[positions],
                batch,
                device,
                preprocess,
                workers=workers,
                sampler=dist.sampler(len(positions), order_seed(config.seed, "stage2")),
            )
            try:
                spec = StageSpec(
                    name="stage2",
                    model=combined,
                    train_batches=lambda epoch, random: feeder.batches(random),
                    val_batches=val_feeder.batches,
                    n_train_batches=feeder.n_batches,
                    forward=lambda m, x: runner(x),
                    eval_forward=lambda m, x: eval_runner(x),
                    class_weights=weights,
                )
                outcomes["stage2"] = yield from fit_stage(spec, settings("stage2"))
            finally:
                feeder.close()
            history += outcomes["stage2"].history
            if sync_bn:
                skeleton = _new_combined_model(config, model_a, model_b, torch.device("cpu"))
                combined = _without_sync_batchnorm(combined, skeleton, device)
            stage[0] = "report"
            probs = yield from _ensemble_probs(model_a, model_b, combined, val_feeder, dtype)
            probs = dist.gather_interleaved(torch.from_numpy(probs), "validation predictions")
            probs = probs.numpy()
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
                dist,
                batch,
            )
            stage[0] = "stage2"
            head = _new_combined_head(config, model_a, model_b, device)
            head_runner, _ = _runners(config, head, dist, device, sync_bn, compile=False)
            train_batches = FeatureBatches(
                train_set.features_a,
                train_set.features_b,
                train_set.labels,
                batch,
                device,
                sampler=dist.sampler(len(train_set), order_seed(config.seed, "stage2")),
            )
            val_share = torch.as_tensor(dist.shard(np.arange(len(val_set))))
            val_batches = FeatureBatches(
                val_set.features_a[val_share],
                val_set.features_b[val_share],
                val_set.labels[val_share],
                max(batch, 256),
                device,
            )
            spec = StageSpec(
                name="stage2",
                model=head,
                train_batches=lambda epoch, random: train_batches.batches(random),
                val_batches=val_batches.batches,
                n_train_batches=train_batches.n_batches,
                forward=lambda m, x: head_runner(*x),
                eval_forward=lambda m, x: m(*x),
                class_weights=weights,
            )
            outcomes["stage2"] = yield from fit_stage(spec, settings("stage2"))
            history += outcomes["stage2"].history
            if sync_bn:
                skeleton = _new_combined_head(config, model_a, model_b, torch.device("cpu"))
                head = _without_sync_batchnorm(head, skeleton, device)
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

    # Rank 0 writes; `share` lets the others wait for it and fail with it (one process: a call).
    def write_report() -> None:
        if main:
            write_json_atomic(paths.report_json, report)
            write_text_atomic(paths.report_text, report_text)
            write_log(paths.log, history)

    def write_bundle() -> None:
        if main:
            meta = _bundle_meta(config, backbone, data, outcomes, report)
            overwrite = (paths.bundle / "bundle.json").is_file()
            save_bundle(paths.bundle, model_a, model_b, head_for_bundle, meta, overwrite=overwrite)

    def write_curves() -> None:
        _write_curves(main, paths, history)
        if main:
            write_json_atomic(paths.root / "run.json", {"finished": True, "stages": list(STAGES)})

    dist.share(write_report, where="writing the report (rank 0)")
    yield Progress(1, 3, "report", "saving the model bundle", {"text": report_text})
    dist.share(write_bundle, where="saving the model bundle (rank 0)")
    yield Progress(2, 3, "report", "drawing the training curves")
    dist.share(write_curves, where="drawing the training curves (rank 0)")
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


def _stage1_side_by_side(
    config, data, dist: Distributed, device, preprocess, workers, subsets, fit_stage1, stage
):
    """`--parallel-models`: model-A on the first half of the processes, model-B on the other.

    Each half trains its model data-parallel among its own processes (with 2 processes: one
    each, no DDP) and its main process writes that model's checkpoint. After every epoch all
    processes exchange a short message, so a half that finished waits in step with the other
    instead of outlasting the timeout. At the end each model is broadcast to every process.
    Returns {name: (model, outcome)}.
    """
    team = dist.split(2)
    leaders = (0, dist.world_size - dist.world_size // 2)
    for size in (dist.world_size - dist.world_size // 2, dist.world_size // 2):
        local_batch_size(config.batch_size, size)  # a clear error when it does not divide
    mine = "stage1-A" if team.members[0] == 0 else "stage1-B"
    stage[0] = mine
    share = team.shard(data.val)
    team_val_feeder = CropFeeder(
        data.cache,
        data.rows[share],
        data.labels[share],
        local_batch_size(config.batch_size, team.world_size),
        device,
        preprocess,
        workers=workers,
    )

    def exchange(done: bool) -> bool:
        messages = dist.all_gather_json({"stage": mine, "done": done}, "stage 1 side by side")
        return all(message["done"] for message in messages)

    try:
        model, outcome = yield from fit_stage1(
            mine,
            subsets[mine],
            team,
            team_val_feeder,
            after_epoch=lambda stage_name, epoch: exchange(False),
        )
    finally:
        team_val_feeder.close()
    other = "stage1-B" if mine == "stage1-A" else "stage1-A"
    while not exchange(True):
        yield Progress(0, None, mine, f"done; waiting for {other} on the other processes")

    found: dict[str, tuple[Stage1Model, StageOutcome]] = {}
    for index, name in enumerate(("stage1-A", "stage1-B")):
        source = leaders[index]
        sending = dist.rank == source
        summary = dist.broadcast_json(
            _outcome_to_json(outcome) if sending else None, f"sharing {name}", source
        )
        tensors = dist.broadcast_tensors(
            model.state_dict() if sending else None, f"sharing {name}", source
        )
        if name == mine:
            found[name] = (model, outcome)
            continue
        received = _new_stage1_model(config, name, device)
        received.load_state_dict(tensors)
        found[name] = (received, StageOutcome(**summary))
    return found


def _outcome_to_json(outcome: StageOutcome) -> dict[str, Any]:
    return {
        "history": outcome.history,
        "best_epoch": outcome.best_epoch,
        "best_val_loss": outcome.best_val_loss,
        "stopped_early": outcome.stopped_early,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "extra": outcome.extra,
    }


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


def _data_to_json(data: _Data) -> dict[str, Any]:
    """What the other ranks need of the preprocessed data (rank 0 sends it)."""
    cache = data.cache
    return {
        "cache": {
            "folder": str(cache.folder),
            "paths": [str(p) for p in cache.paths],
            "keys": list(cache.keys),
            "ok": cache.ok.tolist(),
            "errors": list(cache.errors),
            "notes": list(cache.notes),
            "crop_size": cache.crop_size,
            "params": cache.params,
            "reused": cache.reused,
        },
        "rows": data.rows.tolist(),
        "labels": np.asarray(data.labels).tolist(),
        "subjects": list(data.subjects),
        "files": list(data.files),
        "train": data.train.tolist(),
        "val": data.val.tolist(),
        "split_note": data.split_note,
    }


def _data_from_json(shared: dict[str, Any]) -> _Data:
    """Rank 0's preprocessed data on another rank: the same crop cache, opened from disk."""
    found = shared["cache"]
    cache = CropCache(
        folder=Path(found["folder"]),
        paths=[Path(p) for p in found["paths"]],
        keys=list(found["keys"]),
        ok=np.asarray(found["ok"], dtype=bool).reshape(len(found["paths"])),
        errors=list(found["errors"]),
        notes=list(found["notes"]),
        crop_size=int(found["crop_size"]),
        params=dict(found["params"]),
        reused=int(found["reused"]),
    )
    if cache.paths and not (cache.folder / CROPS_FILE).is_file():
        raise TrainingError(
            f"The crop cache that rank 0 built, {cache.folder}, cannot be seen from this machine. "
            "With several machines, give --cache-dir a folder on a filesystem they all share."
        )
    return _Data(
        cache=cache,
        rows=np.asarray(shared["rows"], dtype=np.int64),
        labels=np.asarray(shared["labels"], dtype=np.int64),
        subjects=list(shared["subjects"]),
        files=list(shared["files"]),
        train=np.asarray(shared["train"], dtype=np.int64),
        val=np.asarray(shared["val"], dtype=np.int64),
        split_note=shared["split_note"],
    )


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    return {"all": int((labels == 1).sum()), "hem": int((labels == 0).sum())}


def _bagging_sets(config: TrainConfig, data: _Data):
    try:
        return make_bagging_subsets(data.labels[data.train], config.seed)
    except ValueError as error:
        raise TrainingError(f"Too few training cells in {config.data_dir}: {error}") from error


def _loader_workers(config: TrainConfig, device: torch.device, processes_here: int = 1) -> int:
    """DataLoader worker processes per training process: the cores of this machine shared by
    its training processes (one each for the process itself), at most 8."""
    if config.workers is not None:
        return max(0, int(config.workers))
    if device.type != "cuda":
        return 0
    return max(0, min(8, default_workers() // max(1, processes_here) - 1))


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


def _use_sync_batchnorm(
    config: TrainConfig, dist: Distributed, device: torch.device, local_batch: int
) -> bool:
    """SyncBatchNorm: only with several GPU processes; "auto" when each one's batch is small."""
    if config.sync_batchnorm == "on" and dist.is_distributed and device.type != "cuda":
        raise TrainingError(
            "--sync-batchnorm on needs GPUs (PyTorch's SyncBatchNorm has no CPU version); "
            "use auto or off on the CPU."
        )
    if not dist.is_distributed or device.type != "cuda" or config.sync_batchnorm == "off":
        return False
    return config.sync_batchnorm == "on" or local_batch < SYNC_BATCHNORM_BELOW


def _runners(config, model, dist: Distributed, device, sync_bn: bool, compile: bool = True):
    """(training forward, validation forward) of `model`.

    One process: the model (compiled where asked) for both. Several: training goes through
    DistributedDataParallel (gradients averaged over the ranks; BatchNorm layers made
    SyncBatchNorm first where `sync_bn`); validation uses the bare model, because each rank
    validates a share of its own size and DDP's forward may talk to the other ranks.
    """
    compile = compile and config.compile
    if not dist.is_distributed:
        runner = torch.compile(model) if compile else model
        return runner, runner
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        from timm.layers import convert_sync_batchnorm

        converted = convert_sync_batchnorm(model, process_group=dist.group)
        if converted is not model:  # pragma: no cover - only a bare BatchNorm is replaced
            raise TrainingError("SyncBatchNorm conversion replaced the whole model")
    options: dict[str, Any] = {}
    if sync_bn:  # SyncBatchNorm keeps the statistics equal itself: no broadcast before forward
        newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        options["forward_sync_buffers" if newer else "broadcast_buffers"] = False
    with dist.guard("wrapping the model for data-parallel training"):
        wrapped = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            process_group=dist.group,
            # gradients written straight into the all-reduce buckets (GPUs: less memory)
            gradient_as_bucket_view=device.type == "cuda",
            **options,
        )
    if compile:
        return torch.compile(wrapped), torch.compile(model)
    return wrapped, model


def _stage1_skeleton(config: TrainConfig) -> Stage1Model:
    """A stage-1 model with plain BatchNorm, to receive trained weights (no download)."""
    return Stage1Model(create_backbone(config.backbone, pretrained=False))


def _without_sync_batchnorm(
    trained: torch.nn.Module, skeleton: torch.nn.Module, device: torch.device
) -> torch.nn.Module:
    """`trained`'s weights in `skeleton` (the same model with plain BatchNorm layers)."""
    skeleton.load_state_dict(trained.state_dict())
    for source, target in zip(trained.parameters(), skeleton.parameters(), strict=True):
        target.requires_grad_(source.requires_grad)
    return _place(skeleton, device)


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
    dist: Distributed,
    batch: int,
):
    """Features of the training and validation cells, from the run folder or computed now.

    Under DDP every rank computes its share (val_feeder already holds this rank's share) and the
    shares are gathered, so each rank ends with all features; rank 0 stores them.
    """
    sets = []
    for what, positions in (("train", data.train), ("val", data.val)):
        path = paths.features / f"{what}.safetensors"
        labels = torch.as_tensor(data.labels[positions])
        found = _load_shared_features(dist, path, labels, what)
        if found is None:
            share = dist.shard(positions)
            feeder = (
                val_feeder
                if what == "val"
                else CropFeeder(
                    data.cache,
                    data.rows[share],
                    data.labels[share],
                    batch,
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
            if dist.is_distributed:
                found = FeatureSet(
                    dist.gather_interleaved(found.features_a, f"{what} features"),
                    dist.gather_interleaved(found.features_b, f"{what} features"),
                    dist.gather_interleaved(found.labels, f"{what} features"),
                )
                if not torch.equal(found.labels, labels.to(found.labels.dtype)):
                    raise DistributedError(
                        f"The gathered {what} features do not line up with their cells."
                    )
            if config.is_main_process:
                found.save(path)
        else:
            yield Progress(1, 1, "features", f"{what} features cached")
        sets.append(found)
    return sets[0], sets[1]


def _load_shared_features(
    dist: Distributed, path: Path, labels: torch.Tensor, what: str
) -> FeatureSet | None:
    """The cached feature set as rank 0 finds it in the run folder, on every rank."""
    if not dist.is_distributed:
        return FeatureSet.load(path, labels)
    found: list[FeatureSet | None] = [None]

    def read() -> bool:
        found[0] = FeatureSet.load(path, labels)
        return found[0] is not None

    if not dist.share(read, where=f"reading the cached {what} features"):
        return None
    mine = found[0]
    tensors = dist.broadcast_tensors(
        {"features_a": mine.features_a, "features_b": mine.features_b, "labels": mine.labels}
        if mine is not None
        else None,
        f"sharing the cached {what} features",
    )
    return FeatureSet(tensors["features_a"], tensors["features_b"], tensors["labels"])


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
        "processes": config.world_size,
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
