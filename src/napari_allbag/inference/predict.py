"""Streamed prediction over image files: segment in worker processes, classify, one row per cell.

Images are read and segmented in worker processes (`segmentation.iter_segment_files`) while a
background thread packs their crops into a bounded queue of uint8 batches and the main loop
classifies the previous batches (`inference.classify.EnsembleRunner`). Memory stays bounded
whatever the number of cells; each file's rows go to a `sink` callback as soon as its last cell is
classified, so 100,000 cells never sit in memory at once.

`stream_predictions` is the engine; `inference.pipeline.predict_files` feeds it the files (the
one entry point the front ends call). Imports torch, numpy and the package's pure modules only,
so `benchmarks/gpu_bench.py` can use the engine on a torch-only machine.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_allbag.inference.classify import (
    PIPELINE_DEPTH,
    CellPredictions,
    EnsembleRunner,
    PendingBatch,
    check_crops,
)
from napari_allbag.model.networks import CLASS_NAMES, MODEL_NAMES
from napari_allbag.progress import Progress
from napari_allbag.segmentation.feedback import ImageFeedback

#: A file's probabilities (crops, 3, 2) and its table -> its `CellPredictions`.
Finish = Callable[[np.ndarray, dict[str, Any]], CellPredictions]
#: Batches waiting for the device in `stream_predictions` (bounds host memory).
QUEUE_BATCHES = 3


@dataclass
class FileSummary:
    """Per-file result of `predict_files`: cell counts, or why the file was skipped."""

    path: Path
    cells: int = 0
    n_all: int = 0
    error: str | None = None
    message: str = ""
    feedback: ImageFeedback | None = None  # mode, and what looks wrong (None for unreadable)
    flagged: int = 0  # cells flagged for review

    @property
    def n_hem(self) -> int:
        return self.cells - self.n_all

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
    feedback: ImageFeedback | None = None

    @property
    def summary(self) -> FileSummary:
        return FileSummary(
            self.path,
            len(self.predictions),
            self.predictions.n_all,
            self.error,
            self.message,
            self.feedback,
            int(self.predictions.flagged.sum()),
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
    feedback: ImageFeedback | None = None


@dataclass
class _Batch:
    pixels: torch.Tensor
    owners: list[tuple[int, int, int]]  # (file index, first row in file, count) runs


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def _file_start(index: int, item: Any) -> tuple[_FileStart, np.ndarray | None]:
    """A segmentation stream's item as a `_FileStart` marker, and its crops (None if none)."""
    path = Path(getattr(item, "path", ""))
    error = getattr(item, "error", None)
    result = getattr(item, "result", None)
    crops = getattr(result, "crops", None) if result is not None else None
    if error is None and result is None:
        error = "no segmentation result"
    message = str(getattr(result, "message", "") or "")
    feedback = ImageFeedback.of(result) if error is None else None
    if error is not None or crops is None or len(crops) == 0:
        table = table_columns(getattr(result, "table", None)) if error is None else {}
        error = str(error) if error else None
        return _FileStart(index, path, table, 0, error, message, feedback), None
    crops = check_crops(crops)
    table = table_columns(result.table)
    return _FileStart(index, path, table, int(crops.shape[0]), None, message, feedback), crops


class _BatchPacker:
    """Packs the crops of successive files into full uint8 batches of the runner's size."""

    def __init__(self, runner: EnsembleRunner):
        self.runner = runner
        self.buffer: np.ndarray | None = None
        self.filled = 0
        self.owners: list[tuple[int, int, int]] = []

    def pack(self, index: int, crops: np.ndarray) -> Iterator[_Batch]:
        """The batches that file `index`'s crops fill (a part may wait for the next file)."""
        size = self.runner.batch_size
        row = 0
        while row < crops.shape[0]:
            if self.buffer is None:
                self.buffer = np.empty((size, *crops.shape[1:]), np.uint8)
            elif self.buffer.shape[1:] != crops.shape[1:]:  # another crop size: ship what we have
                yield from self.flush()
                continue
            take = min(size - self.filled, crops.shape[0] - row)
            self.buffer[self.filled : self.filled + take] = crops[row : row + take]
            self.owners.append((index, row, take))
            self.filled += take
            row += take
            if self.filled == size:
                yield from self.flush()

    def flush(self) -> Iterator[_Batch]:
        """The partly filled batch, if any."""
        if not self.filled:
            return
        batch = _Batch(self.runner.host_batch(self.buffer[: self.filled]), self.owners)
        self.buffer, self.filled, self.owners = None, 0, []
        yield batch


def _put(out: queue.Queue, stop: threading.Event, item: Any) -> bool:
    """Queue `item`, waiting while the queue is full; False once `stop` is set."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(
    stream: Iterable[Any],
    runner: EnsembleRunner,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Background thread: segmentation results -> _FileStart markers and full uint8 batches."""
    iterator = iter(stream)
    packer = _BatchPacker(runner)
    try:
        for index, item in enumerate(iterator):
            if stop.is_set():
                return
            start, crops = _file_start(index, item)
            if not _put(out, stop, start):
                return
            if crops is None:
                continue
            for batch in packer.pack(index, crops):
                if not _put(out, stop, batch):
                    return
        if all(_put(out, stop, batch) for batch in packer.flush()):
            _put(out, stop, _DONE)
    except BaseException as error:  # noqa: BLE001 - hand every failure to the consumer
        _put(out, stop, _Failure(error))
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


class _Feeder:
    """The producer thread and its bounded queue; leaving the `with` stops and joins it."""

    def __init__(self, stream: Iterable[Any], runner: EnsembleRunner):
        self.out: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=_produce,
            args=(stream, runner, self.out, self.stop),
            name="napari-allbag-predict-feeder",
            daemon=True,
        )

    def __enter__(self) -> _Feeder:
        self.thread.start()
        return self

    def items(self) -> Iterator[_FileStart | _Batch]:
        """File markers and batches in order; re-raises the producer's failure."""
        while True:
            item = self.out.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def __exit__(self, *exc_info: Any) -> None:
        self.stop.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.out.get(timeout=0.05)
        self.thread.join()


class _FileAssembler:
    """Gathers each file's probabilities; hands finished files to the sink in input order."""

    def __init__(
        self,
        run: PredictionRun,
        sink: Callable[[FilePredictions], None] | None,
        finish: Finish | None = None,
    ):
        self.run = run
        self.sink = sink
        self.finish = finish
        self.pending: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.cells_done = 0

    def start(self, item: _FileStart) -> bool:
        """Expect a file's cells; True when files finished (a file with no cell is done)."""
        shape = (item.cells, len(MODEL_NAMES), len(CLASS_NAMES))
        self.pending[item.index] = {"start": item, "done": 0, "probs": np.empty(shape, np.float32)}
        return self.finish_ready() > 0

    def collect(self, handle: PendingBatch, owners: list[tuple[int, int, int]]) -> None:
        """Wait for one batch and file its probabilities under their files; finish those done."""
        probs = handle.result()
        offset = 0
        for index, row, count in owners:
            entry = self.pending[index]
            entry["probs"][row : row + count] = probs[offset : offset + count]
            entry["done"] += count
            offset += count
        self.cells_done += offset
        self.finish_ready()

    def finish_ready(self) -> int:
        """Send every leading file whose cells are all classified to the sink; how many."""
        finished = 0
        while self.pending:
            entry = next(iter(self.pending.values()))
            start = entry["start"]
            if entry["done"] < start.cells:
                break
            self.pending.popitem(last=False)
            if self.finish is not None:
                predictions = self.finish(entry["probs"], start.table)
            elif start.cells:
                predictions = CellPredictions.from_probs(entry["probs"])
            else:
                predictions = CellPredictions.empty()
            result = FilePredictions(
                start.path, start.table, predictions, start.error, start.message, start.feedback
            )
            self.run.files.append(result.summary)
            if self.sink is not None:
                self.sink(result)
            finished += 1
        return finished


def stream_predictions(
    runner: EnsembleRunner,
    stream: Iterable[Any],
    total_files: int,
    sink: Callable[[FilePredictions], None] | None = None,
    finish: Finish | None = None,
) -> Generator[Progress, None, PredictionRun]:
    """Classify the cells of a segmentation stream (FileSegmentation-like items) with `runner`.

    A background thread packs crops into batches while this loop keeps `PIPELINE_DEPTH` batches
    on the device; `sink` gets each file as soon as its last cell is classified. `finish(probs,
    table)` turns a file's probabilities (one row per crop) into its `CellPredictions` (default:
    the paper's rule; the pipeline passes its rule, calibration, TTA and review flags).
    """
    run = PredictionRun(device=runner.description)
    files = _FileAssembler(run, sink, finish)
    start = time.perf_counter()

    def progress() -> Progress:
        elapsed = max(time.perf_counter() - start, 1e-9)
        metrics = {"cells": files.cells_done, "cells/s": files.cells_done / elapsed}
        return Progress(len(run.files), total_files, "predict", runner.description, metrics)

    yield Progress(0, total_files, "predict", runner.description, {"cells": 0})
    in_flight: deque[tuple[PendingBatch, list[tuple[int, int, int]]]] = deque()
    with _Feeder(stream, runner) as feeder:
        for item in feeder.items():
            if isinstance(item, _FileStart):
                if files.start(item):
                    yield progress()
                continue
            in_flight.append((runner.submit(item.pixels), item.owners))
            if len(in_flight) >= PIPELINE_DEPTH:
                files.collect(*in_flight.popleft())
                yield progress()
        while in_flight:
            files.collect(*in_flight.popleft())
            yield progress()
        files.finish_ready()
    run.seconds = time.perf_counter() - start
    return run
