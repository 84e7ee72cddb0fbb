"""Fast, streamed ensemble inference: crops in, per-cell probabilities, labels and confidence out.

Speed: `torch.inference_mode`, channels_last, autocast on a GPU (bf16 where supported, else fp16),
batches sized to the device, optional `torch.compile`. Crops travel as uint8 (4x less than float),
from pinned host memory with `non_blocking=True`, and are converted and normalised on the device.

Streaming (`predict_files`): images are read and segmented in worker processes
(`segmentation.iter_segment_files`) while a background thread packs their crops into a bounded
queue of uint8 batches and the main loop classifies the previous batches. Memory stays bounded
whatever the number of cells; each file's rows go to a `sink` callback as soon as its last cell is
classified, so 100,000 cells never sit in memory at once.

On a GPU, `EnsembleRunner.submit` uploads the next batch on a side stream while the previous one
computes, and copies results back into pinned memory without blocking.

Imports torch, numpy and the package's pure modules only (the segmentation is imported when
`predict_files` runs), so `benchmarks/gpu_bench.py` can use the engine on a torch-only machine.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_allbag.devices import autocast_dtype, default_batch_size, device_description
from napari_allbag.models import CLASS_NAMES, MODEL_NAMES, decide
from napari_allbag.progress import Progress

#: Batches waiting for the device in `predict_files` (bounds host memory).
QUEUE_BATCHES = 3
#: Batches submitted to the device before waiting for the oldest (upload overlaps compute).
PIPELINE_DEPTH = 2


@dataclass
class CellPredictions:
    """The ensemble's output for N cells: probabilities (N, 3, 2), labels (1 = ALL), confidence."""

    probs: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray

    @classmethod
    def from_probs(cls, probs: np.ndarray) -> CellPredictions:
        probs = np.asarray(probs, dtype=np.float32).reshape(-1, len(MODEL_NAMES), len(CLASS_NAMES))
        labels, confidence = decide(probs)
        return cls(probs, labels.astype(np.int64), confidence.astype(np.float32))

    @classmethod
    def empty(cls) -> CellPredictions:
        return cls.from_probs(np.zeros((0, len(MODEL_NAMES), len(CLASS_NAMES)), np.float32))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def p_all(self) -> np.ndarray:
        """P(ALL) per cell and model, (N, 3) in the order model-A, model-B, combined."""
        return self.probs[..., CLASS_NAMES.index("all")]

    @property
    def label_names(self) -> np.ndarray:
        return np.asarray(CLASS_NAMES, dtype=object)[self.labels]

    @property
    def n_all(self) -> int:
        return int((self.labels == CLASS_NAMES.index("all")).sum())

    def columns(self) -> dict[str, np.ndarray]:
        """The prediction columns (`defaults.PREDICTION_COLUMNS`) for a cell table; labels as class names."""
        p_all = self.p_all
        return {
            "p_all_model_a": p_all[:, 0],
            "p_all_model_b": p_all[:, 1],
            "p_all_combined": p_all[:, 2],
            "label": self.label_names,
            "confidence": self.confidence,
        }


@dataclass
class FileSummary:
    """Per-file result of `predict_files`: cell counts, or why the file was skipped."""

    path: Path
    cells: int = 0
    n_all: int = 0
    error: str | None = None
    message: str = ""

    @property
    def all_fraction(self) -> float | None:
        return self.n_all / self.cells if self.cells else None


@dataclass
class FilePredictions:
    """One file's cells: its segmentation table (column -> values) and the predictions."""

    path: Path
    table: dict[str, Any]
    predictions: CellPredictions
    error: str | None = None
    message: str = ""

    @property
    def summary(self) -> FileSummary:
        return FileSummary(
            self.path, len(self.predictions), self.predictions.n_all, self.error, self.message
        )


@dataclass
class PredictionRun:
    """The result of `predict_files`: per-file summaries and throughput."""

    files: list[FileSummary] = field(default_factory=list)
    device: str = ""
    seconds: float = 0.0

    @property
    def cells(self) -> int:
        return sum(f.cells for f in self.files)

    @property
    def n_all(self) -> int:
        return sum(f.n_all for f in self.files)

    @property
    def errors(self) -> list[FileSummary]:
        return [f for f in self.files if f.error]

    @property
    def cells_per_second(self) -> float:
        return self.cells / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------- the batch runner


class _PendingBatch:
    """Probabilities on their way back from the device; `result()` waits for them."""

    def __init__(self, probs: torch.Tensor, count: int, event: Any = None, keep: Any = None):
        self.probs = probs
        self.count = count
        self.event = event
        self.keep = keep  # the pinned input, alive until the copy to the device is done

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        self.keep = None
        return self.probs[: self.count].numpy()


class EnsembleRunner:
    """Runs a loaded bundle's ensemble on uint8 crop batches with the device's fast settings.

    `submit` queues a batch and returns at once on a GPU (upload on a side stream, compute,
    copy back into pinned memory), so the next batch uploads while this one computes; `result()`
    on the returned handle waits. On the CPU `submit` simply computes.
    """

    def __init__(
        self,
        bundle: Any,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        compile: bool = False,
    ):
        self.bundle = bundle
        self.device = torch.device(device) if device is not None else torch.device(bundle.device)
        if torch.device(bundle.device) != self.device:
            bundle.ensemble.to(device=self.device, memory_format=torch.channels_last)
            bundle.device = self.device
        bundle.ensemble.eval()
        self.batch_size = int(batch_size or default_batch_size(self.device))
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.cuda = self.device.type == "cuda"
        self.autocast = autocast_dtype(self.device) if self.cuda else None
        self.pin = self.cuda
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.compiled = bool(compile)
        self.model: Callable[[torch.Tensor], torch.Tensor] = bundle.ensemble
        if compile:
            # a fixed batch shape (the last batch is padded) avoids recompiles
            self.model = torch.compile(bundle.ensemble, dynamic=False)
        self.description = device_description(self.device)

    def host_batch(self, crops: np.ndarray) -> torch.Tensor:
        """A uint8 host tensor for `crops`, pinned when the device is a CUDA GPU."""
        array = np.ascontiguousarray(crops, dtype=np.uint8)
        if not array.flags.writeable:  # e.g. a read-only memory map of the crop cache
            array = array.copy()
        tensor = torch.from_numpy(array)
        return tensor.pin_memory() if self.pin else tensor

    def submit(self, batch: torch.Tensor) -> _PendingBatch:
        """Start classifying a uint8 (B, S, S, 3) host batch; returns a handle to its result."""
        count = int(batch.shape[0])
        if self.compiled and count < self.batch_size:
            pad = batch.new_zeros((self.batch_size - count, *batch.shape[1:]))
            batch = torch.cat([batch, pad.pin_memory() if batch.is_pinned() else pad])
        with torch.inference_mode():
            if self.cuda:
                compute = torch.cuda.current_stream(self.device)
                with torch.cuda.stream(self.copy_stream):
                    pixels = batch.to(self.device, non_blocking=True)
                compute.wait_stream(self.copy_stream)
                pixels.record_stream(compute)
            else:
                pixels = batch.to(self.device)
            context = (
                torch.autocast(self.device.type, dtype=self.autocast)
                if self.autocast is not None
                else contextlib.nullcontext()
            )
            with context:
                probs = self.model(pixels)
            probs = probs.float()
            if not self.cuda:
                return _PendingBatch(probs.cpu(), count)
            host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            event = torch.cuda.Event()
            event.record(compute)
            return _PendingBatch(host, count, event, keep=batch)

    def run(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities (B, 3, 2) float32 for a uint8 (B, S, S, 3) host batch (waits)."""
        return self.submit(batch).result()


def make_runner(
    bundle: Any,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    compile: bool = False,
    engine: str | None = "torch",
    crop_size: int | None = None,
) -> Any:
    """An `EnsembleRunner` for the torch engine, else an `engines.Engine` (same submit interface)."""
    from napari_allbag.engines import EngineError, make_engine, resolve_engine

    target = torch.device(device) if device is not None else torch.device(bundle.device)
    name = "torch" if compile and engine == "auto" else resolve_engine(engine, target)
    if name == "torch":
        return EnsembleRunner(bundle, device, batch_size, compile)
    if compile:
        raise EngineError(f"compile applies to the torch engine only, not to {name}")
    size = crop_size or bundle.crop_size
    return make_engine(engine, bundle.ensemble, target, batch_size, size, bundle.path)


def _check_crops(crops: np.ndarray) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"crops must be (N, S, S, 3) RGB, got shape {crops.shape}")
    if crops.dtype != np.uint8:
        raise ValueError(f"crops must be uint8 (as the segmentation makes them), got {crops.dtype}")
    return crops


def classify_crops(
    bundle: Any,
    crops: np.ndarray,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    compile: bool = False,
    engine: str = "torch",
) -> Generator[Progress, None, CellPredictions]:
    """Classify uint8 crops (N, S, S, 3) in batches; yields Progress, returns CellPredictions.

    `engine` is one of `engines.ENGINES` ("auto": the fastest installed on the CPU).
    """
    crops = _check_crops(crops)
    total = int(crops.shape[0])
    if total == 0:
        return CellPredictions.empty()
    runner = make_runner(bundle, device, batch_size, compile, engine, int(crops.shape[1]))
    probs = np.empty((total, len(MODEL_NAMES), len(CLASS_NAMES)), np.float32)
    yield Progress(0, total, "classify", runner.description)
    start = time.perf_counter()
    in_flight: deque[tuple[int, int, _PendingBatch]] = deque()

    def collect() -> Progress:
        first, last, pending = in_flight.popleft()
        probs[first:last] = pending.result()
        rate = last / max(time.perf_counter() - start, 1e-9)
        return Progress(last, total, "classify", runner.description, {"cells/s": rate})

    for first in range(0, total, runner.batch_size):
        last = min(total, first + runner.batch_size)
        in_flight.append((first, last, runner.submit(runner.host_batch(crops[first:last]))))
        if len(in_flight) >= PIPELINE_DEPTH:
            yield collect()
    while in_flight:
        yield collect()
    return CellPredictions.from_probs(probs)


# ----------------------------------------------------------------------------- streaming files


def table_columns(table: Any, rows: int | None = None) -> dict[str, Any]:
    """A segmentation table as {column: values}, whatever its form (dict, DataFrame, records)."""
    if table is None:
        return {}
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas DataFrame
        return {str(c): np.asarray(table[c]) for c in table.columns}
    if isinstance(table, dict):
        return {str(k): v for k, v in table.items()}
    if isinstance(table, np.ndarray) and table.dtype.names:
        return {name: table[name] for name in table.dtype.names}
    records = list(table)
    if records and isinstance(records[0], dict):
        names: list[str] = []
        for record in records:
            names.extend(k for k in record if k not in names)
        return {name: [record.get(name) for record in records] for name in names}
    return {}


@dataclass
class _FileStart:
    index: int
    path: Path
    table: dict[str, Any]
    cells: int
    error: str | None
    message: str = ""


@dataclass
class _Batch:
    pixels: torch.Tensor
    owners: list[tuple[int, int, int]]  # (file index, first row in file, count) runs


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def _segmentation_stream(paths: Sequence[Path], params: Any, workers: int | None) -> Iterable[Any]:
    from napari_allbag.segmentation import iter_segment_files

    return iter_segment_files(paths, params, workers=workers, keep_labels=False)


def _produce(
    stream: Iterable[Any],
    runner: EnsembleRunner,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Background thread: segmentation results -> _FileStart markers and full uint8 batches."""

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    iterator = iter(stream)
    buffer: np.ndarray | None = None
    filled = 0
    owners: list[tuple[int, int, int]] = []

    def flush() -> bool:
        nonlocal buffer, filled, owners
        if not filled:
            return True
        pixels = runner.host_batch(buffer[:filled])
        ok = put(_Batch(pixels, owners))
        buffer, filled, owners = None, 0, []
        return ok

    try:
        for index, item in enumerate(iterator):
            if stop.is_set():
                return
            path = Path(getattr(item, "path", ""))
            error = getattr(item, "error", None)
            result = getattr(item, "result", None)
            crops = getattr(result, "crops", None) if result is not None else None
            if error is None and result is None:
                error = "no segmentation result"
            message = str(getattr(result, "message", "") or "")
            if error is not None or crops is None or len(crops) == 0:
                table = table_columns(getattr(result, "table", None)) if error is None else {}
                error = str(error) if error else None
                if not put(_FileStart(index, path, table, 0, error, message)):
                    return
                continue
            crops = _check_crops(crops)
            table = table_columns(result.table)
            if not put(_FileStart(index, path, table, int(crops.shape[0]), None, message)):
                return
            row = 0
            while row < crops.shape[0]:
                if buffer is None:
                    buffer = np.empty((runner.batch_size, *crops.shape[1:]), np.uint8)
                elif buffer.shape[1:] != crops.shape[1:]:  # another crop size: ship what we have
                    if not flush():
                        return
                    continue
                take = min(runner.batch_size - filled, crops.shape[0] - row)
                buffer[filled : filled + take] = crops[row : row + take]
                owners.append((index, row, take))
                filled += take
                row += take
                if filled == runner.batch_size and not flush():
                    return
        if flush():
            put(_DONE)
    except BaseException as error:  # noqa: BLE001 - hand every failure to the consumer
        put(_Failure(error))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def predict_files(
    bundle: Any,
    paths: Sequence[str | Path],
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
    compile: bool = False,
    sink: Callable[[FilePredictions], None] | None = None,
    params: Any = None,
    segment_stream: Callable[[Sequence[Path], Any, int | None], Iterable[Any]] | None = None,
    engine: str = "torch",
) -> Generator[Progress, None, PredictionRun]:
    """Segment and classify every cell of every image, streamed; yields Progress.

    `sink(FilePredictions)` receives each file's table and predictions, in input order, as soon
    as its last cell is classified (unreadable files arrive with `error` set and no cells).
    Returns a `PredictionRun` with per-file summaries. `params` overrides the bundle's
    segmentation parameters; `segment_stream` replaces `segmentation.iter_segment_files`;
    `engine` is one of `engines.ENGINES`.
    """
    paths = [Path(p) for p in paths]
    params = params if params is not None else bundle.segmentation
    crop_size = params.get("crop_size") if isinstance(params, dict) else params.crop_size
    runner = make_runner(bundle, device, batch_size, compile, engine, crop_size)
    stream = (segment_stream or _segmentation_stream)(paths, params, workers)
    run = PredictionRun(device=runner.description)
    total_files = len(paths)
    start = time.perf_counter()
    yield Progress(0, total_files, "predict", runner.description, {"cells": 0})

    pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
    out: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce,
        args=(stream, runner, out, stop),
        name="napari-allbag-predict-feeder",
        daemon=True,
    )
    producer.start()
    cells_done = 0

    def finish_ready() -> None:
        while pending:
            index, entry = next(iter(pending.items()))
            if entry["done"] < entry["cells"]:
                return
            pending.popitem(last=False)
            predictions = (
                CellPredictions.from_probs(entry["probs"])
                if entry["cells"]
                else CellPredictions.empty()
            )
            file_result = FilePredictions(
                entry["path"], entry["table"], predictions, entry["error"], entry["message"]
            )
            run.files.append(file_result.summary)
            if sink is not None:
                sink(file_result)

    in_flight: deque[tuple[_PendingBatch, list[tuple[int, int, int]]]] = deque()

    def collect_oldest() -> None:
        nonlocal cells_done
        handle, owners = in_flight.popleft()
        probs = handle.result()
        offset = 0
        for index, row, count in owners:
            entry = pending[index]
            entry["probs"][row : row + count] = probs[offset : offset + count]
            entry["done"] += count
            offset += count
        cells_done += offset

    def progress() -> Progress:
        elapsed = max(time.perf_counter() - start, 1e-9)
        metrics = {"cells": cells_done, "cells/s": cells_done / elapsed}
        return Progress(len(run.files), total_files, "predict", runner.description, metrics)

    try:
        while True:
            item = out.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.error
            if isinstance(item, _FileStart):
                pending[item.index] = {
                    "path": item.path,
                    "table": item.table,
                    "cells": item.cells,
                    "error": item.error,
                    "message": item.message,
                    "done": 0,
                    "probs": np.empty((item.cells, len(MODEL_NAMES), len(CLASS_NAMES)), np.float32),
                }
                files_before = len(run.files)
                finish_ready()
                if len(run.files) != files_before:
                    yield progress()
                continue
            in_flight.append((runner.submit(item.pixels), item.owners))
            if len(in_flight) >= PIPELINE_DEPTH:
                collect_oldest()
                finish_ready()
                yield progress()
        while in_flight:
            collect_oldest()
            finish_ready()
            yield progress()
        finish_ready()
    finally:
        stop.set()
        while producer.is_alive():
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.05)
        producer.join()
    run.seconds = time.perf_counter() - start
    return run
