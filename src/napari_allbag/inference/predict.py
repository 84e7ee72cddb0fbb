"""Streamed prediction over image files: segment in worker processes, classify, one row per cell.

Images are read and segmented in worker processes (`segmentation.iter_segment_files`) while a
background thread packs their crops into a bounded queue of uint8 batches and the main loop
classifies the previous batches (`inference.classify.EnsembleRunner`). Memory stays bounded
whatever the number of cells; each file's rows go to a `sink` callback as soon as its last cell is
classified, so 100,000 cells never sit in memory at once.

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

from napari_allbag.inference.classify import (
    PIPELINE_DEPTH,
    CellPredictions,
    EnsembleRunner,
    _check_crops,
    _PendingBatch,
)
from napari_allbag.model.networks import CLASS_NAMES, MODEL_NAMES
from napari_allbag.progress import Progress

#: Batches waiting for the device in `predict_files` (bounds host memory).
QUEUE_BATCHES = 3


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
    from napari_allbag.segmentation.dark import iter_segment_files

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
) -> Generator[Progress, None, PredictionRun]:
    """Segment and classify every cell of every image, streamed; yields Progress.

    `sink(FilePredictions)` receives each file's table and predictions, in input order, as soon
    as its last cell is classified (unreadable files arrive with `error` set and no cells).
    Returns a `PredictionRun` with per-file summaries. `params` overrides the bundle's
    segmentation parameters; `segment_stream` replaces `segmentation.iter_segment_files`.
    """
    paths = [Path(p) for p in paths]
    runner = EnsembleRunner(bundle, device, batch_size, compile)
    params = params if params is not None else bundle.segmentation
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
