"""Training settings (`TrainConfig`), the run folder's layout, and how a run is started or resumed.

A run folder is never overwritten silently: starting a run in a folder that already holds files
is an error unless `resume=True`, and resuming takes the settings that shape the result from the
run's own `config.json` (only where the data is, the device, the worker count, the cache and,
when given, the batch size may change).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from napari_allbag.defaults import DEFAULT_TARGET_SENSITIVITY, ENSEMBLE_RULES
from napari_allbag.io.atomic import TEMP_SUFFIX, remove_stale_temps, write_json_atomic
from napari_allbag.io.schema import MAX_CROP_SIZE, MIN_CROP_SIZE
from napari_allbag.model.networks import DEFAULT_BACKBONE

#: Settings that do not change the trained weights, so a resumed run may change them.
RUNTIME_FIELDS = (
    "data_dir",
    "out_dir",
    "device",
    "workers",
    "resume",
    "cache_dir",
    "rank",
    "compile",
    "world_size",
    "sync_batchnorm",
    "parallel_models",
)
#: `sync_batchnorm` choices: auto = on GPUs when each process's batch is small (see docs).
SYNC_BATCHNORM_CHOICES = ("auto", "on", "off")
CONFIG_FILE = "config.json"


class TrainingError(ValueError):
    """Training cannot start or go on; the message says why and what to do."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the paper's settings (Liu & Long 2019).

    class_weights are (HEM, ALL), the order of CLASS_NAMES, used by the combined model's loss.
    batch_size None: 32 on CPU (Keras' default), 64 on a GPU. workers None: no DataLoader
    worker process on CPU, up to 8 on a GPU (segmentation uses all cores either way).
    segmentation: further `SegmentationParams` (erosion_size, min_area); crop_size is its own field.
    rank, world_size: this process's place under torchrun/DDP; only rank 0 writes files. Under
    DDP, batch_size is the GLOBAL batch (each of the world_size processes takes its share).
    sync_batchnorm: "auto" (SyncBatchNorm on GPUs when each process's batch is below 32),
    "on" or "off"; parallel_models: train model-A and model-B at the same time, each on half of
    the processes (see docs/distributed.md).
    target_sensitivity: the ALL sensitivity the stored threshold keeps on the validation split;
    rule: the ensemble rule the bundle uses by default ("max", the paper's; see `model.rules`).
    compile: run the backbones through `torch.compile` while training (fewer, fused kernels: on
    a GPU the eager step is bound by Python's kernel launches at batch 64; costs a compilation
    per input shape at the start of a stage).
    """

    data_dir: Path
    out_dir: Path
    backbone: str = DEFAULT_BACKBONE
    img_size: int | None = None
    pretrained: bool = True
    weights_path: Path | None = None
    epochs: int = 50
    batch_size: int | None = None
    lr: float = 1e-3
    patience_lr: int = 6
    patience_stop: int = 12
    finetune_backbones: bool = False
    seed: int = 0
    device: str | None = None
    workers: int | None = None
    crop_size: int = 299
    segmentation: dict[str, Any] = field(default_factory=dict)
    class_weights: tuple[float, float] = (1.0, 2.5)
    val_fraction: float = 0.3
    resume: bool = False
    subjects_csv: Path | None = None
    cache_dir: Path | None = None
    rank: int = 0
    compile: bool = False
    world_size: int = 1
    sync_batchnorm: str = "auto"
    parallel_models: bool = False
    synthetic_data: bool = False  # generated cells (the demo): the model card warns
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
    rule: str = "max"
    init_from: Path | None = None  # a bundle whose backbones and head the run starts from

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        self.out_dir = Path(self.out_dir).expanduser()
        for name in ("weights_path", "subjects_csv", "cache_dir", "init_from"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value).expanduser())
        self.class_weights = tuple(float(w) for w in self.class_weights)
        self.segmentation = dict(self.segmentation or {})
        problems = []
        if self.epochs < 1:
            problems.append(f"--epochs must be at least 1 (got {self.epochs})")
        if self.batch_size is not None and self.batch_size < 2:
            problems.append(f"--batch-size must be at least 2 (got {self.batch_size})")
        if self.lr <= 0:
            problems.append(f"--lr (learning rate) must be positive (got {self.lr})")
        if len(self.class_weights) != 2 or min(self.class_weights) <= 0:
            problems.append(f"class_weights need two positive values (got {self.class_weights})")
        if not 0 < self.val_fraction < 1:
            problems.append(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")
        if not MIN_CROP_SIZE <= self.crop_size <= MAX_CROP_SIZE:  # a bundle's bounds (io/schema.py)
            problems.append(
                f"crop size must be {MIN_CROP_SIZE} to {MAX_CROP_SIZE} pixels (got {self.crop_size})"
            )
        if self.sync_batchnorm not in SYNC_BATCHNORM_CHOICES:
            problems.append(
                f"--sync-batchnorm must be one of {', '.join(SYNC_BATCHNORM_CHOICES)} "
                f"(got {self.sync_batchnorm!r})"
            )
        if not 0 < self.target_sensitivity <= 1:
            problems.append(f"target sensitivity must be in (0, 1] (got {self.target_sensitivity})")
        if self.rule not in ENSEMBLE_RULES:
            problems.append(f"rule must be one of {', '.join(ENSEMBLE_RULES)} (got {self.rule!r})")
        if self.world_size < 1 or self.rank < 0:
            problems.append(f"invalid rank {self.rank} / world size {self.world_size}")
        if problems:
            raise TrainingError("Invalid training settings: " + "; ".join(problems) + ".")

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        data["class_weights"] = list(self.class_weights)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RunPaths:
    """Where a run keeps its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_text(self) -> Path:
        return self.root / "summary.txt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def log(self) -> Path:
        return self.root / "log.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_text(self) -> Path:
        return self.root / "report.txt"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"


def load_run_config(out_dir: str | Path) -> TrainConfig:
    """The settings a run folder was started with (its `config.json`)."""
    path = RunPaths(Path(out_dir).expanduser()).config
    if not path.is_file():
        if path.parent.is_dir() and not holds_run_files(path.parent):
            raise TrainingError(
                f"Nothing to resume in {path.parent}: the run was stopped before it saved "
                f"{CONFIG_FILE}. Start it again without --resume (same --out)."
            )
        raise TrainingError(
            f"Nothing to resume in {path.parent}: it has no {CONFIG_FILE}, so it is not a "
            "napari-allbag training run. Choose the folder given as --out when training started."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainConfig.from_dict(data["config"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise TrainingError(
            f"{path} cannot be read ({error}); the run folder is damaged."
        ) from error


def prepare_run(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """Check the run folder and settle the settings: a new run or a resumed one.

    Returns the config to train with and notes for the user (settings ignored on resume).
    """
    out_dir = config.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"{out_dir} is a file; give a folder for the training run (--out).")
    notes: list[str] = []
    if config.resume and (out_dir / CONFIG_FILE).is_file() and not has_trained(out_dir):
        # a start that failed before its first epoch (no network for the ImageNet weights, a
        # refused --weights file): nothing to continue, so the settings given now are honoured
        notes.append("nothing was trained in this run folder yet: starting it again as given")
        config = replace(config, resume=False)
    if not config.resume:
        check_new_run_folder(out_dir)
        if config.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_leftovers(out_dir)  # of a run killed before it saved config.json
            save_run_config(config)
        return config, notes

    saved = load_run_config(out_dir)
    default = TrainConfig(data_dir=config.data_dir, out_dir=config.out_dir)
    changes: dict[str, Any] = {name: getattr(config, name) for name in RUNTIME_FIELDS}
    if config.batch_size is not None and config.batch_size != saved.batch_size:
        changes["batch_size"] = config.batch_size
        notes.append(
            f"batch size changed from {saved.batch_size} to {config.batch_size} for the rest of "
            "the run (the result will differ from an uninterrupted run)"
        )
    for item in fields(TrainConfig):
        name = item.name
        if name in changes or name == "batch_size":
            continue
        given, kept = getattr(config, name), getattr(saved, name)
        if given == kept or given == getattr(default, name):
            continue
        if name in WEIGHT_SOURCE_FIELDS:  # never dropped quietly: the user asked for other weights
            raise TrainingError(
                f"{describe_setting(name, given)} cannot change on --resume: this run's epochs "
                f"were trained with {describe_setting(name, kept)}. Resume without it, or start a "
                "new run (a new --out folder)."
            )
        notes.append(
            f"{describe_setting(name, given)} ignored: the run continues with "
            f"{describe_setting(name, kept)}"
        )
    resumed = replace(saved, **changes)
    if config.is_main_process:
        remove_leftovers(out_dir)
        save_run_config(resumed)
    return resumed, notes


def _is_leftover(path: Path) -> bool:
    """A temporary file or a half-written bundle of a killed run (never a finished output)."""
    name = path.name
    return name.startswith(".") and (
        name.endswith(TEMP_SUFFIX) or ".partial-" in name or ".old-" in name
    )


def claim_run_folder(config: TrainConfig):
    """Refuse a run folder inside the data (or holding it), then lock it: `<out>.lock` beside
    it, so a second run into the same folder (also `--resume`) is told who trains there."""
    from napari_allbag.io.lock import LockHeld, RunLock
    from napari_allbag.io.paths import OutputLocationError, check_output_location

    try:
        check_output_location(config.out_dir, [config.data_dir], folder=True)
        return RunLock(config.out_dir).acquire()
    except (OutputLocationError, LockHeld) as error:
        raise TrainingError(str(error)) from error


#: What a start leaves before its first epoch: settings and the data summary (a rerun replaces
#: them). Anything else (checkpoints, log.csv, features, the bundle) is a run's work.
FAILED_START_FILES = (CONFIG_FILE, "summary.json", "summary.txt")
#: Settings that say where the starting weights come from: refused, not ignored, on --resume.
WEIGHT_SOURCE_FIELDS = ("pretrained", "weights_path", "backbone", "init_from")
#: The command-line flag of each TrainConfig field whose name differs from `--field-name`.
CLI_FLAGS = {
    "out_dir": "--out",
    "weights_path": "--weights",
    "compile": "--compile",
}


def describe_setting(name: str, value: Any) -> str:
    """A setting as the user typed it (`--no-pretrained`, `--lr 0.01`), not its Python name."""
    if name == "pretrained":
        return "ImageNet weights (no --no-pretrained)" if value else "--no-pretrained"
    flag = CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}" if value is not None else f"no {flag}"


def check_new_run_folder(out_dir: Path) -> None:
    """Refuse a folder holding a run's work or files of the user's; a failed start is retried."""
    if not out_dir.is_dir() or not holds_run_files(out_dir) or _only_failed_start(out_dir):
        return
    hint = (
        " It holds a training run: continue it with --resume (Resume in the widget)."
        if has_trained(out_dir)
        else ""
    )
    raise TrainingError(
        f"The run folder {out_dir} already holds files and is never overwritten.{hint} "
        "Or choose a new or empty folder."
    )


def has_trained(out_dir: Path) -> bool:
    """Whether the run folder holds training work (a checkpoint, the log, the bundle)."""
    paths = RunPaths(Path(out_dir))
    return paths.log.is_file() or paths.bundle.exists() or any(paths.checkpoints.glob("*.json"))


def _only_failed_start(out_dir: Path) -> bool:
    """True when `out_dir` holds only what a start that failed before training wrote."""
    return all(
        _is_leftover(entry) or entry.name in FAILED_START_FILES or _empty_folder(entry)
        for entry in Path(out_dir).iterdir()
    )


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(p.is_file() for p in path.rglob("*"))


def holds_run_files(out_dir: Path) -> bool:
    """Whether `out_dir` holds anything but the leftovers of a killed run."""
    return any(not _is_leftover(entry) for entry in Path(out_dir).iterdir())


def remove_leftovers(out_dir: Path) -> None:
    """Delete temporary files and `.bundle.partial-*` folders a killed run left (under the run
    folder's lock, so no live writer owns them)."""
    import shutil

    remove_stale_temps(out_dir)
    for entry in Path(out_dir).glob(".*"):
        if _is_leftover(entry) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def save_run_config(config: TrainConfig) -> None:
    from napari_allbag import __version__

    write_json_atomic(
        RunPaths(config.out_dir).config,
        {"napari_allbag": __version__, "config": config.to_dict()},
    )
