"""The one classify pipeline: a loaded bundle -> segment -> classify, for every front end.

The Classify widget, the demo, `evaluate` and `predict` all run the same steps through here:

    classify_image(bundle, image, options)           one image: segment it, classify its cells
    classify_labels(bundle, image, labels, table)    cells already found (a label image)
    classify_segmented(bundle, segmented, options)   a `SegmentationResult` in, predictions out
    classify_files_cached(bundle, paths, options)    files through the crop cache (evaluate)
    predict_files(bundle, paths, options, sink)      files streamed, one sink call per file

Each is a progress generator (yields `Progress`, returns its result). `PipelineOptions` holds the
settings that travel together (batch size, device, workers, ...): a new setting of the pipeline
becomes a field there, not a new parameter of every function.

Imports torch and the package's pure modules; the segmentation (OpenCV) loads when a function
that segments runs, so `inference.classify` users on a torch-only machine are unaffected.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.inference.classify import CellPredictions, EnsembleRunner, classify_crops
from napari_allbag.inference.decision import Decision, judge, resolve_decision
from napari_allbag.inference.predict import FilePredictions, PredictionRun, stream_predictions
from napari_allbag.inference.tta import N_VIEWS, dihedral_views
from napari_allbag.progress import Progress

#: What `predict_files` segments with: (paths, params, workers) -> FileSegmentation-like items.
SegmentStream = Callable[[Sequence[Path], Any, "int | None"], Iterable[Any]]


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline runs; every field's default is the front ends' default.

    batch_size: crops per ensemble batch (None: sized to the device).
    device: where the ensemble runs (None: where the bundle was loaded).
    workers: segmentation processes for files (None: the segmentation's default).
    compile: `torch.compile` the ensemble (worth it on large runs).
    segmentation: `SegmentationParams` replacing the bundle's (None: the bundle's own).
    background: "auto", "dark" or "bright" replacing the segmentation's background mode (None:
        the bundle's own, "auto" for bundles saved before the mode existed).
    engine: `inference.engines.ENGINES` ("torch" here; the CLI's default is "auto": ONNX Runtime
        or OpenVINO on the CPU when installed, else torch).
    rule: the ensemble rule, `model.rules.RULES` (None: the bundle's, "max" for older bundles).
    tta: test-time augmentation, the 8 dihedral views of each crop averaged (about 8x the cost).
    decision: "paper" (the rule's own label) or "threshold" (the bundle's sensitivity threshold).
    review_band: cells whose P(ALL) lies this close to the threshold in use are flagged.
    (`inference.decision` applies the last four and the bundle's temperatures.)
    """

    batch_size: int | None = None
    device: Any = None
    workers: int | None = None
    compile: bool = False
    segmentation: Any = None
    background: str | None = None
    engine: str = "torch"
    rule: str | None = None
    tta: bool = False
    decision: str = "paper"
    review_band: float = 0.1


DEFAULT_OPTIONS = PipelineOptions()


@dataclass
class ImagePredictions:
    """One image's cells (its `SegmentationResult`) and the ensemble's predictions for them."""

    segmentation: Any  # segmentation.SegmentationResult
    predictions: CellPredictions

    @property
    def labels(self) -> np.ndarray | None:
        return self.segmentation.labels

    @property
    def table(self) -> dict[str, Any]:
        return self.segmentation.table

    @property
    def crops(self) -> np.ndarray:
        return self.segmentation.crops

    @property
    def message(self) -> str:
        return self.segmentation.message


@dataclass
class CachedPredictions:
    """Files classified through the crop cache: the cache (rows, errors) and one row per file."""

    cache: Any  # segmentation.CropCache
    predictions: CellPredictions
    params: Any  # the SegmentationParams used

    @property
    def rows(self) -> np.ndarray:
        """Indices of the files that gave a crop (rows of `predictions` that count)."""
        return np.flatnonzero(self.cache.ok)


def segmentation_params(bundle: Any, options: PipelineOptions = DEFAULT_OPTIONS) -> Any:
    """The `SegmentationParams` the pipeline uses: the options' override, else the bundle's."""
    params = options.segmentation if options.segmentation is not None else bundle.segmentation
    if isinstance(params, dict):
        from napari_allbag.segmentation.dark import SegmentationParams

        params = SegmentationParams.from_dict(params)
    if options.background is not None and options.background != params.background:
        params = replace(params, background=options.background)
    return params


def make_runner(
    bundle: Any, options: PipelineOptions = DEFAULT_OPTIONS, crop_size: int | None = None
) -> EnsembleRunner | Any:
    """The runner for `bundle`: an `EnsembleRunner` (engine torch) or an `engines.Engine` with
    the same `host_batch` / `submit` interface, on the options' device, batch size, compile."""
    from napari_allbag.inference.engines import engine_runner

    return engine_runner(
        bundle, options.device, options.batch_size, options.compile, options.engine, crop_size
    )


def decision_for(bundle: Any, options: PipelineOptions = DEFAULT_OPTIONS) -> Decision:
    """The rule, calibration, threshold and review policy for `bundle` under `options`."""
    from napari_allbag.model.trust import TrustSettings

    trust = getattr(bundle, "trust", None) or TrustSettings()
    return resolve_decision(trust, options.rule, options.decision, options.review_band)


def finisher(
    bundle: Any, options: PipelineOptions = DEFAULT_OPTIONS
) -> Callable[[np.ndarray, dict[str, Any]], CellPredictions]:
    """`finish(probs, table)` for the options: probabilities of one row per crop (8 rows per
    cell with TTA) and the cells' table -> judged `CellPredictions` (`inference.decision`)."""
    decision = decision_for(bundle, options)

    def finish(probs: np.ndarray, table: dict[str, Any]) -> CellPredictions:
        probs = np.asarray(probs, np.float32)
        if options.tta:
            probs = probs.reshape(-1, N_VIEWS, *probs.shape[1:])
        return CellPredictions.from_judged(judge(probs, decision, table))

    return finish


def _with_views(crops: np.ndarray) -> np.ndarray:
    """The 8 dihedral views of each crop, cell by cell: (N * 8, S, S, 3)."""
    views = dihedral_views(np.asarray(crops))  # (8, N, S, S, 3)
    return np.ascontiguousarray(views.swapaxes(0, 1)).reshape(-1, *views.shape[2:])


def classify_cells(
    bundle: Any,
    crops: np.ndarray,
    options: PipelineOptions = DEFAULT_OPTIONS,
    table: dict[str, Any] | None = None,
) -> Generator[Progress, None, CellPredictions]:
    """Classify uint8 crops (N, S, S, 3) with the options' batch size, device, compile, engine,
    rule, TTA and decision (the cells' segmentation `table` feeds the review flags)."""
    finish = finisher(bundle, options)
    if options.tta:
        crops = _with_views(crops) if len(crops) else crops
    raw = yield from classify_crops(
        bundle, crops, options.batch_size, options.device, options.compile, options.engine
    )
    return finish(raw.probs, table or {})


def classify_segmented(
    bundle: Any, segmented: Any, options: PipelineOptions = DEFAULT_OPTIONS
) -> Generator[Progress, None, ImagePredictions]:
    """Classify the cells of a `SegmentationResult`; returns them with their predictions."""
    predictions = yield from classify_cells(bundle, segmented.crops, options, segmented.table)
    return ImagePredictions(segmented, predictions)


def classify_image(
    bundle: Any,
    image: np.ndarray,
    options: PipelineOptions = DEFAULT_OPTIONS,
    source: str = "",
) -> Generator[Progress, None, ImagePredictions]:
    """Segment an RGB uint8 image with the bundle's (or the options') parameters and classify it."""
    from napari_allbag.segmentation.brightfield import segment_auto_progress

    params = segmentation_params(bundle, options)
    segmented = yield from segment_auto_progress(image, params, source)
    return (yield from classify_segmented(bundle, segmented, options))


def cell_ids(table: dict[str, Any], labels: np.ndarray) -> np.ndarray:
    """Cell ids of the rows of a cell table (napari's 'index', else 'cell_id', else the labels)."""
    for name in ("index", "cell_id"):
        if name in table and len(table[name]):
            return np.asarray(table[name], dtype=np.int64)
    ids = np.unique(labels)
    return ids[ids > 0].astype(np.int64)


def classify_labels(
    bundle: Any,
    image: np.ndarray | None,
    labels: np.ndarray,
    table: dict[str, Any] | None = None,
    crops: np.ndarray | None = None,
    options: PipelineOptions = DEFAULT_OPTIONS,
) -> Generator[Progress, None, ImagePredictions]:
    """Classify cells already found: a label image (and its table); `crops` when they match,
    otherwise they are cut again from `image` at the bundle's crop size."""
    from napari_allbag.segmentation.dark import SegmentationResult
    from napari_allbag.segmentation.recrop import crops_from_labels

    table = dict(table or {})
    ids = cell_ids(table, labels)
    table.setdefault("cell_id", ids)
    if crops is None:
        if image is None:
            raise ValueError("an image is needed to cut the cells' crops from")
        yield Progress(0, None, "cutting crops", f"{len(ids)} cells")
        crops = crops_from_labels(image, labels, ids, bundle.crop_size)
    segmented = SegmentationResult(labels, table, crops)
    return (yield from classify_segmented(bundle, segmented, options))


def classify_files_cached(
    bundle: Any,
    paths: Sequence[str | os.PathLike],
    options: PipelineOptions = DEFAULT_OPTIONS,
    cache_dir: str | os.PathLike | None = None,
) -> Generator[Progress, None, CachedPredictions]:
    """One crop per file through the on-disk crop cache (shared with training), classified."""
    from napari_allbag.segmentation.crop_cache import build_crop_cache
    from napari_allbag.segmentation.dark import default_workers

    params = segmentation_params(bundle, options)
    workers = default_workers() if options.workers is None else options.workers
    cache = yield from build_crop_cache(paths, params, cache_dir, workers)
    predictions = yield from classify_cells(bundle, cache.crops, options)
    return CachedPredictions(cache, predictions, params)


def segmentation_stream(
    paths: Sequence[Path], params: Any, workers: int | None, keep_labels: bool = False
) -> Iterable[Any]:
    """The files' segmentations in order; label images only when asked (overlays need them,
    classifying does not, and each is 4 bytes a pixel through the workers' spool)."""
    from napari_allbag.segmentation.dark import iter_segment_files

    return iter_segment_files(paths, params, workers=workers, keep_labels=keep_labels)


def stream_shown_to(keepers: Sequence[Any], keep_labels: bool = False) -> SegmentStream:
    """A `segment_stream` for `predict_files` whose every item each keeper (`keep(item)`: the
    CAM and overlay writers) sees before it is classified; label images kept when asked."""

    def stream(paths, params, workers):
        for item in segmentation_stream(paths, params, workers, keep_labels=keep_labels):
            for keeper in keepers:
                keeper.keep(item)
            yield item

    return stream


def predict_files(
    bundle: Any,
    paths: Sequence[str | os.PathLike],
    options: PipelineOptions = DEFAULT_OPTIONS,
    sink: Callable[[FilePredictions], None] | None = None,
    segment_stream: SegmentStream | None = None,
) -> Generator[Progress, None, PredictionRun]:
    """Segment and classify every cell of every image, streamed; yields Progress.

    `sink(FilePredictions)` receives each file's table and predictions, in input order, as soon
    as its last cell is classified (unreadable files arrive with `error` set and no cells).
    Returns a `PredictionRun` with per-file summaries. `segment_stream` replaces
    `segmentation.iter_segment_files` (tests feed prepared results through it).
    """
    paths = [Path(p) for p in paths]
    params = segmentation_params(bundle, options)
    runner = make_runner(bundle, options, getattr(params, "crop_size", None))
    stream = (segment_stream or segmentation_stream)(paths, params, options.workers)
    if options.tta:
        stream = map(_item_with_views, stream)
    finish = finisher(bundle, options)
    return (yield from stream_predictions(runner, stream, len(paths), sink, finish))


def _item_with_views(item: Any) -> Any:
    """A segmentation stream's item whose crops are replaced by their 8 views (TTA)."""
    result = getattr(item, "result", None)
    crops = getattr(result, "crops", None)
    if crops is None or not len(crops):
        return item
    result = copy.copy(result)
    result.crops = _with_views(crops)
    item = copy.copy(item)
    item.result = result
    return item
