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

from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_allbag.data.annotations import AnnotationError
from napari_allbag.data.bagging import describe_subsets
from napari_allbag.evaluation.report import build_report, format_report
from napari_allbag.io.atomic import OutputError, write_json_atomic, write_text_atomic
from napari_allbag.model.bundle import BundleError, save_bundle
from napari_allbag.model.devices import DeviceError, release_memory, select_device
from napari_allbag.model.networks import (
    BackboneWeightsError,
    CombinedHead,
    CombinedModel,
    Preprocess,
    Stage1Model,
    UnknownBackboneError,
    resolve_backbone,
)
from napari_allbag.model.trust import format_calibration
from napari_allbag.progress import Progress
from napari_allbag.training.batches import CropFeeder, FeatureBatches
from napari_allbag.training.build import (
    make_runners,
    new_combined_head,
    new_combined_model,
    new_stage1_model,
    stage1_skeleton,
    without_sync_batchnorm,
)
from napari_allbag.training.checkpoint import CheckpointError
from napari_allbag.training.config import (
    RunPaths,
    TrainConfig,
    TrainingError,
    claim_run_folder,
    prepare_run,
    save_run_config,
)
from napari_allbag.training.curves import write_log
from napari_allbag.training.distributed import (
    Distributed,
    DistributedError,
    fault_point,
    is_distributed_failure,
    local_batch_size,
    lost_contact,
)
from napari_allbag.training.loop import (
    StageOutcome,
    StageSettings,
    StageSpec,
    fit_stage,
    order_seed,
)
from napari_allbag.training.outputs import bundle_meta, calibration_fields, draw_curves
from napari_allbag.training.prepare import (
    bagging_sets,
    data_from_json,
    data_to_json,
    preprocess_cells,
)
from napari_allbag.training.prepare import (  # re-exported: callers import it from here
    segmentation_params as segmentation_params,
)
from napari_allbag.training.resources import (
    autocast_dtype_for,
    default_train_batch_size,
    loader_workers,
    use_sync_batchnorm,
)
from napari_allbag.training.stage1 import stage1_side_by_side
from napari_allbag.training.stage2 import cached_features, ensemble_probs, probs_from_features

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


def train(
    config: TrainConfig, dist: Distributed | None = None
) -> Generator[Progress, None, TrainResult]:
    """Run (or resume) a training run; see the module doc.

    `dist`: this process's place in a data-parallel run (`distributed.process_group()`); None
    for a single process. The run folder is locked (rank 0) until the run ends.
    """
    held: list = []  # the run folder's lock, taken by rank 0 while settling the config
    try:
        return (yield from _train_claimed(config, dist, held))
    except OutputError as error:  # disk full, read-only: what is saved stays whole
        raise TrainingError(
            f"{error} Every finished epoch is kept: once fixed, continue with --resume."
        ) from error
    finally:
        for lock in held:
            lock.release()


def _train_claimed(
    config: TrainConfig, dist: Distributed | None, held: list
) -> Generator[Progress, None, TrainResult]:
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
            lambda: _settle_config(config, device, dist.world_size, held),
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
    except (
        AnnotationError,
        UnknownBackboneError,
        BackboneWeightsError,
        BundleError,
        CheckpointError,
    ) as error:
        raise TrainingError(str(error)) from error
    except Exception as error:
        if dist.is_distributed and is_distributed_failure(error):
            raise lost_contact(error, stage[0], dist.rank, dist.timeout_s) from error
        raise
    finally:
        release_memory(device)


def _settle_config(
    config: TrainConfig, device: torch.device, world_size: int, held: list
) -> tuple[TrainConfig, list[str]]:
    """Check the data and run folders, lock the run folder, start or resume the run, fix the
    batch size (rank 0)."""
    if not config.data_dir.is_dir():
        raise TrainingError(
            f"Annotated folder not found: {config.data_dir}. Choose the folder that holds the "
            "all/ and hem/ folders."
        )
    held.append(claim_run_folder(config))
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
        preprocess_cells(config, paths),
        encode=data_to_json,
        decode=data_from_json,
        stage="preprocess",
        where="preprocessing (rank 0 builds the crop cache)",
    )
    subset_a, subset_b = bagging_sets(config, data)
    text = describe_subsets(subset_a, subset_b, data.labels[data.train])
    yield Progress(0, None, "preprocess", "bagging sets ready", {"text": text})

    dtype = autocast_dtype_for(device)
    preprocess = Preprocess(backbone)
    history: list[dict[str, Any]] = []
    outcomes: dict[str, StageOutcome] = {}
    workers = loader_workers(config, device, dist.local_world_size)
    batch = local_batch_size(config.batch_size, dist.world_size)
    sync_bn = use_sync_batchnorm(config, dist, device, batch)

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
        team_sync_bn = use_sync_batchnorm(config, team, device, team_batch)
        yield Progress(0, None, name, f"building the model ({config.backbone})")
        model = new_stage1_model(config, name, device)
        runner, eval_runner = make_runners(config, model, team, device, team_sync_bn)
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
            model = without_sync_batchnorm(model, stage1_skeleton(config), device)
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
            found = yield from stage1_side_by_side(
                config, data, dist, device, preprocess, workers, subsets, fit_stage1, stage
            )
            for name, (model, outcome) in found.items():
                models[name], outcomes[name] = model, outcome
                history += outcome.history
            draw_curves(main, paths, history)
            if main:
                write_log(paths.log, history)
        else:
            for name, subset in subsets.items():
                stage[0] = name
                models[name], outcomes[name] = yield from fit_stage1(name, subset, dist, val_feeder)
                history += outcomes[name].history
                draw_curves(main, paths, history)
        model_a, model_b = models["stage1-A"], models["stage1-B"]

        weights = torch.tensor(config.class_weights, dtype=torch.float32)
        if config.finetune_backbones:
            stage[0] = "stage2"
            combined = new_combined_model(config, model_a, model_b, device)
            runner, eval_runner = make_runners(config, combined, dist, device, sync_bn)
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
                skeleton = new_combined_model(config, model_a, model_b, torch.device("cpu"))
                combined = without_sync_batchnorm(combined, skeleton, device)
            stage[0] = "report"
            probs = yield from ensemble_probs(model_a, model_b, combined, val_feeder, dtype)
            probs = dist.gather_interleaved(torch.from_numpy(probs), "validation predictions")
            probs = probs.numpy()
            head_for_bundle: CombinedHead | CombinedModel = combined
        else:
            stage[0] = "features"
            train_set, val_set = yield from cached_features(
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
            head = new_combined_head(config, model_a, model_b, device)
            head_runner, _ = make_runners(config, head, dist, device, sync_bn, compile=False)
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
                skeleton = new_combined_head(config, model_a, model_b, torch.device("cpu"))
                head = without_sync_batchnorm(head, skeleton, device)
            stage[0] = "report"
            probs = probs_from_features(model_a, model_b, head, val_set, device)
            head_for_bundle = head
    finally:
        val_feeder.close()

    stage[0] = "report"
    yield Progress(0, 3, "report", "validation report")
    report = build_report(
        "validation",
        data.labels[data.val],
        probs,
        files=[data.files[i] for i in data.val],
        subjects=[data.subjects[i] for i in data.val],
        context={
            "split": data.split_note,
            "best_epochs": {name: o.best_epoch for name, o in outcomes.items()},
        },
    )
    trust = calibration_fields(config, data, probs)
    report["context"]["calibration"] = trust["calibration"]
    report["context"]["decision"] = trust["decision"]
    report_text = format_report(report) + "\n\n" + format_calibration(trust) + "\n"

    # Rank 0 writes; `share` lets the others wait for it and fail with it (one process: a call).
    def write_report() -> None:
        if main:
            write_json_atomic(paths.report_json, report)
            write_text_atomic(paths.report_text, report_text)
            write_log(paths.log, history)

    def write_bundle() -> None:
        if main:
            meta = bundle_meta(config, backbone, data, outcomes, report, trust)
            overwrite = (paths.bundle / "bundle.json").is_file()
            save_bundle(paths.bundle, model_a, model_b, head_for_bundle, meta, overwrite=overwrite)

    def write_curves() -> None:
        draw_curves(main, paths, history)
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
