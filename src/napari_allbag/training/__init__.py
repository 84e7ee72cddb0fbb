"""The two-stage bagging training: the run (`run.train`), its settings and run folder (`config`),
the data (`prepare`, `batches`), the models (`build`), one stage's epochs (`loop`, `schedule`),
stage-1 side by side (`stage1`), stage-2 features (`features`, `stage2`), checkpoints, curves,
outputs, device-dependent settings (`resources`) and torchrun/DDP (`distributed`).

May import: everything below it: `io`, `data`, `segmentation`, `model`, `inference`,
`evaluation`, `progress`, `defaults`.
"""

from napari_allbag._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("STAGES", "TrainResult", "train"), "run"),
    **dict.fromkeys(("TrainConfig", "TrainingError", "RunPaths", "load_run_config"), "config"),
    **dict.fromkeys(("CheckpointError", "save_checkpoint", "load_checkpoint"), "checkpoint"),
    **dict.fromkeys(
        ("read_log", "write_log", "draw_curves", "render_curves_png", "save_curves"), "curves"
    ),
    **dict.fromkeys(("Distributed", "DistributedError"), "distributed"),
    **dict.fromkeys(("StageSpec", "StageOutcome", "fit_stage"), "loop"),
    "PlateauSchedule": "schedule",
    **dict.fromkeys(("CropFeeder", "FeatureBatches"), "batches"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
