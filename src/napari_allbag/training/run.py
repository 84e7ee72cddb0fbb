"""The paper's two-stage bagging training (Liu & Long 2019, Sec. 2.3-2.5), as a progress generator.

    scan the annotated folder -> summary -> 7:3 split by subject -> crop cache (segment once)
    -> bagging sets A and B -> stage 1: model-A on A, model-B on B
    -> stage 2: the combined model on all training cells (frozen backbones: cached features)
    -> validation report (model-A, model-B, combined, ensemble) -> model bundle, log.csv, curves.png

`train(config)` yields `Progress` events (stages 'preprocess', 'stage1-A', 'stage1-B',
'features', 'stage2', 'report'), each marked with its numbered step (`training.steps`: scanning,
segmenting, caching crops, building the models, training), and returns a `TrainResult`. Every epoch is checkpointed; with
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
from functools import partial
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
from napari_allbag.progress import Progress, retold
from napari_allbag.training.batches import CropFeeder, CropSource, FeatureBatches
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
from napari_allbag.training.curves import save_curves, write_log
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
from napari_allbag.training.outputs import bundle_meta, calibration_fields
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
from napari_allbag.training.stage1 import SideBySide
from napari_allbag.training.stage2 import cached_features, ensemble_probs, probs_from_features
from napari_allbag.training.steps import BUILD, CACHE, SCAN, TRAIN, numbered

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "train", "STAGES"]

STAGES = ("preprocess", "stage1-A", "stage1-B", "features", "stage2", "report")

#: Failures a user can act on (the data, the backbone, a bundle or checkpoint): a `TrainingError`.
USER_ERRORS = (
    AnnotationError,
    UnknownBackboneError,
    BackboneWeightsError,
    BundleError,
    CheckpointError,
)


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
    """`train` once the lock list is in place: settle the settings, then run the steps."""
    dist = dist if dist is not None else Distributed.single()
    config, device = _place(config, dist)
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
    run = TrainingRun(config, device, notes, dist)
    try:
        return (yield from _train(run))
    except DistributedError:
        raise
    except torch.cuda.OutOfMemoryError as error:
        smaller = max(2, batch_size // 2)
        raise TrainingError(
            f"Out of GPU memory in {run.stage} with batch size {batch_size}. Continue with a "
            f"smaller batch: napari-allbag train {config.data_dir} --out {config.out_dir} --resume "
            f"--batch-size {smaller} (in the widget: a new run with batch size {smaller})."
        ) from error
    except USER_ERRORS as error:
        raise TrainingError(str(error)) from error
    except Exception as error:
        if dist.is_distributed and is_distributed_failure(error):
            raise lost_contact(error, run.stage, dist.rank, dist.timeout_s) from error
        raise
    finally:
        release_memory(device)


def _place(config: TrainConfig, dist: Distributed) -> tuple[TrainConfig, torch.device]:
    """This process's settings and device (a `TrainingError` for an unknown device or backbone)."""
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
    return config, device


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


def _train(run: TrainingRun) -> Generator[Progress, None, TrainResult]:
    """The run's steps (a seam: tests replace it to see how `train` reports a failure)."""
    return (yield from run.steps())


class TrainingRun:
    """One run, step by step: announce, prepare the data, stage 1, stage 2, finish (the report,
    the bundle, the curves).

    Each step is a short generator method that reads the settings and what the steps before it
    left on `self` (the data, the stage-1 models, the history), and leaves its own results there.
    `stage` names the step now running, for the messages of a failure.
    """

    def __init__(
        self, config: TrainConfig, device: torch.device, notes: list[str], dist: Distributed
    ):
        self.config = config
        self.device = device
        self.notes = notes
        self.dist = dist
        self.stage = "preprocess"
        self.paths = RunPaths(config.out_dir)
        self.main = config.is_main_process
        self.backbone = resolve_backbone(config.backbone, config.img_size)
        self.history: list[dict[str, Any]] = []
        self.outcomes: dict[str, StageOutcome] = {}
        self.built_one = False  # whether this process built its first model (`build_step`)

    def steps(self) -> Generator[Progress, None, TrainResult]:
        """The whole run (see the module doc); returns the `TrainResult`."""
        yield from retold(self.announce(), numbered(SCAN))
        yield from self.prepare()
        self.val_feeder = self.crops.feeder(self.dist.shard(self.data.val), self.batch)
        try:
            yield from retold(self.training(), numbered(TRAIN))
        finally:
            self.val_feeder.close()
        return (yield from retold(self.finish(), numbered(TRAIN)))

    def training(self) -> Generator[Progress, None, None]:
        """Stage 1, then stage 2 (on cached features, or fine-tuning the backbones)."""
        yield from self.stage1()
        if self.config.finetune_backbones:
            yield from self.stage2_finetuned()
        else:
            yield from self.stage2_on_features()

    def announce(self) -> Generator[Progress, None, None]:
        """The run's notes: resumed, data-parallel, `--parallel-models` without processes."""
        config, dist = self.config, self.dist
        if config.resume:
            self.notes.insert(0, f"resuming the run in {config.out_dir}")
        if dist.is_distributed:
            self.notes.append(
                f"data-parallel training on {dist.world_size} processes ({dist.backend}), global "
                f"batch {config.batch_size} = {local_batch_size(config.batch_size, dist.world_size)} "
                "per process"
            )
        if config.parallel_models and not dist.is_distributed:
            self.notes.append(
                "--parallel-models needs several processes (torchrun or --gpus N); model-A and "
                "model-B are trained one after the other"
            )
        for note in self.notes:
            yield Progress(0, None, "preprocess", note, {"text": note})

    def prepare(self) -> Generator[Progress, None, None]:
        """The data (rank 0 builds the crop cache), the bagging sets and the device settings."""
        config, dist, device = self.config, self.dist, self.device
        self.data = yield from dist.share_work(
            preprocess_cells(config, self.paths),
            encode=data_to_json,
            decode=data_from_json,
            stage="preprocess",
            where="preprocessing (rank 0 builds the crop cache)",
        )
        subset_a, subset_b = bagging_sets(config, self.data)
        text = describe_subsets(subset_a, subset_b, self.data.labels[self.data.train])
        yield numbered(CACHE)(Progress(0, None, "preprocess", "bagging sets ready", {"text": text}))
        self.subsets = {"stage1-A": subset_a, "stage1-B": subset_b}
        self.dtype = autocast_dtype_for(device)
        workers = loader_workers(config, device, dist.local_world_size)
        self.crops = CropSource(self.data, device, Preprocess(self.backbone), workers)
        self.batch = local_batch_size(config.batch_size, dist.world_size)
        self.sync_bn = use_sync_batchnorm(config, dist, device, self.batch)
        self.class_weights = torch.tensor(config.class_weights, dtype=torch.float32)

    def stage1(self) -> Generator[Progress, None, None]:
        """Model-A on set A and model-B on set B: one after the other, or side by side."""
        if self.config.parallel_models and self.dist.is_distributed:
            found = yield from self.stage1_side_by_side()
            self.models = {name: model for name, (model, _) in found.items()}
            for name, (_, outcome) in found.items():
                self.outcomes[name] = outcome
                self.history += outcome.history
            save_curves(self.main, self.paths.curves, self.history)
            if self.main:
                write_log(self.paths.log, self.history)
            return
        self.models = {}
        for name in self.subsets:
            self.stage = name
            found = yield from self.fit_stage1(name, self.dist, self.val_feeder)
            self.models[name], self.outcomes[name] = found
            self.history += self.outcomes[name].history
            save_curves(self.main, self.paths.curves, self.history)

    def stage1_side_by_side(
        self,
    ) -> Generator[Progress, None, dict[str, tuple[Stage1Model, StageOutcome]]]:
        """`--parallel-models`: this process's half trains its model; both are then shared."""
        halves = SideBySide.split(self.config, self.dist)
        self.stage = halves.mine
        team = halves.team
        team_batch = local_batch_size(self.config.batch_size, team.world_size)
        team_val_feeder = self.crops.feeder(team.shard(self.data.val), team_batch)
        try:
            model, outcome = yield from self.fit_stage1(
                halves.mine, team, team_val_feeder, after_epoch=halves.after_epoch
            )
        finally:
            team_val_feeder.close()
        yield from halves.wait_for_the_other()
        return halves.share_models(model, outcome, self.config, self.device)

    def fit_stage1(
        self, name: str, team: Distributed, val_feeder: CropFeeder, after_epoch=None
    ) -> Generator[Progress, None, tuple[Stage1Model, StageOutcome]]:
        """Train model-A or model-B on `team` (all processes, or a half); (model, outcome)."""
        config, device = self.config, self.device
        team_batch = local_batch_size(config.batch_size, team.world_size)
        team_sync_bn = use_sync_batchnorm(config, team, device, team_batch)
        yield numbered(self.build_step())(Progress(0, None, name, self.building_text(name)))
        model = new_stage1_model(config, name, device)
        runners = make_runners(config, model, team, device, team_sync_bn)
        readers = self.crops.workers
        where = f"{readers} crop-reader processes" if readers else "crops read in this process"
        yield Progress(0, None, name, f"starting the first batch ({where})")
        subset = self.subsets[name]
        positions = self.data.train[subset.indices]
        sampler = team.sampler(len(positions), order_seed(config.seed, name))
        feeder = self.crops.feeder(positions, team_batch, augment=subset.augment, sampler=sampler)
        try:
            spec = StageSpec.over_batches(name, model, feeder, val_feeder, runners)
            outcome = yield from fit_stage(spec, self.stage_settings(team, after_epoch))
        finally:
            feeder.close()
        if team_sync_bn:
            model = without_sync_batchnorm(model, stage1_skeleton(config), device)
        return model, outcome

    def build_step(self) -> int:
        """Step 4 (building the models) for this process's first model, then step 5."""
        first, self.built_one = not self.built_one, True
        return BUILD if first else TRAIN

    def building_text(self, name: str) -> str:
        """What building `name` means: the backbone and where its weights come from."""
        config = self.config
        if config.init_from is not None:
            weights = f"weights of {config.init_from}"
        elif config.weights_path is not None:
            weights = f"weights from {config.weights_path}"
        else:
            weights = "ImageNet weights" if config.pretrained else "random weights"
        model = f"model-{name.rsplit('-', 1)[-1]}"
        return f"building {model} ({config.backbone}, {weights})"

    def stage2_finetuned(self) -> Generator[Progress, None, None]:
        """`--finetune-backbones`: the whole combined model trained on the crops."""
        config, device, dist = self.config, self.device, self.dist
        model_a, model_b = self.models["stage1-A"], self.models["stage1-B"]
        self.stage = "stage2"
        combined = new_combined_model(config, model_a, model_b, device)
        runners = make_runners(config, combined, dist, device, self.sync_bn)
        positions = self.data.train
        sampler = dist.sampler(len(positions), order_seed(config.seed, "stage2"))
        feeder = self.crops.feeder(positions, self.batch, sampler=sampler)
        try:
            spec = StageSpec.over_batches(
                "stage2", combined, feeder, self.val_feeder, runners, self.class_weights
            )
            self.outcomes["stage2"] = yield from fit_stage(spec, self.stage_settings())
        finally:
            feeder.close()
        self.history += self.outcomes["stage2"].history
        if self.sync_bn:
            skeleton = new_combined_model(config, model_a, model_b, torch.device("cpu"))
            combined = without_sync_batchnorm(combined, skeleton, device)
        self.stage = "report"
        probs = yield from ensemble_probs(model_a, model_b, combined, self.val_feeder, self.dtype)
        probs = dist.gather_interleaved(torch.from_numpy(probs), "validation predictions")
        self.probs = probs.numpy()
        self.head_for_bundle: CombinedHead | CombinedModel = combined

    def stage2_on_features(self) -> Generator[Progress, None, None]:
        """The paper's stage 2: the combined head on the frozen backbones' cached features."""
        config, device, dist = self.config, self.device, self.dist
        model_a, model_b = self.models["stage1-A"], self.models["stage1-B"]
        self.stage = "features"
        train_set, val_set = yield from cached_features(
            (model_a, model_b),
            self.crops,
            self.val_feeder,
            self.batch,
            self.paths.features,
            self.dtype,
            dist,
        )
        self.stage = "stage2"
        head = new_combined_head(config, model_a, model_b, device)
        head_runner, _ = make_runners(config, head, dist, device, self.sync_bn, compile=False)
        sampler = dist.sampler(len(train_set), order_seed(config.seed, "stage2"))
        train_batches = FeatureBatches.of(train_set, self.batch, device, sampler=sampler)
        val_share = torch.as_tensor(dist.shard(np.arange(len(val_set))))
        val_batches = FeatureBatches.of(val_set.select(val_share), max(self.batch, 256), device)
        spec = StageSpec.over_batches(
            "stage2",
            head,
            train_batches,
            val_batches,
            (head_runner, head),
            self.class_weights,
            spread_inputs=True,
        )
        self.outcomes["stage2"] = yield from fit_stage(spec, self.stage_settings())
        self.history += self.outcomes["stage2"].history
        if self.sync_bn:
            skeleton = new_combined_head(config, model_a, model_b, torch.device("cpu"))
            head = without_sync_batchnorm(head, skeleton, device)
        self.stage = "report"
        self.probs = probs_from_features(model_a, model_b, head, val_set, device)
        self.head_for_bundle = head

    def stage_settings(self, team: Distributed | None = None, after_epoch=None) -> StageSettings:
        """A stage's settings; `team`: the processes that train it (all, or a half)."""
        config = self.config
        team = team if team is not None else self.dist
        return StageSettings(
            epochs=config.epochs,
            lr=config.lr,
            patience_lr=config.patience_lr,
            patience_stop=config.patience_stop,
            seed=config.seed,
            device=self.device,
            checkpoint_dir=self.paths.checkpoints,
            is_main_process=team.is_main,
            autocast_dtype=self.dtype,
            on_epoch_end=self.log_epochs if self.main else None,
            dist=team,
            after_epoch=partial(self.after_epoch, after_epoch),
        )

    def log_epochs(self, rows: list[dict[str, Any]]) -> None:
        """`log.csv` with the stages before and this stage's epochs so far (rank 0)."""
        write_log(self.paths.log, self.history + rows)

    def after_epoch(self, then, stage: str, epoch: int) -> None:
        """Every rank, after each epoch: the test fault point, then `then(stage, epoch)`."""
        fault_point(stage, epoch, self.dist.rank)
        if then is not None:
            then(stage, epoch)

    def finish(self) -> Generator[Progress, None, TrainResult]:
        """The validation report, the model bundle and the curves; rank 0 writes them.

        `share` lets the other ranks wait for rank 0 and fail with it (one process: a call).
        """
        self.stage = "report"
        yield Progress(0, 3, "report", "validation report")
        self.validation_report()
        self.dist.share(self.write_report, where="writing the report (rank 0)")
        yield Progress(1, 3, "report", "saving the model bundle", {"text": self.report_text})
        self.dist.share(self.write_bundle, where="saving the model bundle (rank 0)")
        yield Progress(2, 3, "report", "drawing the training curves")
        self.dist.share(self.write_curves, where="drawing the training curves (rank 0)")
        yield Progress(3, 3, "report", f"done: bundle in {self.paths.bundle}")
        return TrainResult(
            run_dir=self.paths.root,
            bundle_path=self.paths.bundle,
            report=self.report,
            report_text=self.report_text,
            log_path=self.paths.log,
            curves_path=self.paths.curves,
            history=self.history,
            notes=self.notes,
        )

    def validation_report(self) -> None:
        """Table 1 on the validation cells, and the calibration fitted on them (`trust`)."""
        data = self.data
        self.report = build_report(
            "validation",
            data.labels[data.val],
            self.probs,
            files=[data.files[i] for i in data.val],
            subjects=[data.subjects[i] for i in data.val],
            context={
                "split": data.split_note,
                "best_epochs": {name: o.best_epoch for name, o in self.outcomes.items()},
            },
        )
        self.trust = calibration_fields(self.config, data, self.probs)
        self.report["context"]["calibration"] = self.trust["calibration"]
        self.report["context"]["decision"] = self.trust["decision"]
        calibration = format_calibration(self.trust)
        self.report_text = format_report(self.report) + "\n\n" + calibration + "\n"

    def write_report(self) -> None:
        if self.main:
            write_json_atomic(self.paths.report_json, self.report)
            write_text_atomic(self.paths.report_text, self.report_text)
            write_log(self.paths.log, self.history)

    def write_bundle(self) -> None:
        if self.main:
            paths, outcomes = self.paths, self.outcomes
            config, backbone, data = self.config, self.backbone, self.data
            meta = bundle_meta(config, backbone, data, outcomes, self.report, self.trust)
            overwrite = (paths.bundle / "bundle.json").is_file()
            model_a, model_b = self.models["stage1-A"], self.models["stage1-B"]
            save_bundle(
                paths.bundle, model_a, model_b, self.head_for_bundle, meta, overwrite=overwrite
            )

    def write_curves(self) -> None:
        save_curves(self.main, self.paths.curves, self.history)
        if self.main:
            finished = {"finished": True, "stages": list(STAGES)}
            write_json_atomic(self.paths.root / "run.json", finished)
