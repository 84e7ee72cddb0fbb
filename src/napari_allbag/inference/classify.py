"""Fast ensemble inference: crops in, per-cell probabilities, labels and confidence out.

Speed: `torch.inference_mode`, channels_last, autocast on a GPU (bf16 where supported, else fp16),
batches sized to the device, optional `torch.compile`. Crops travel as uint8 (4x less than float),
from pinned host memory with `non_blocking=True`, and are converted and normalised on the device.

On a GPU, `EnsembleRunner.submit` uploads the next batch on a side stream while the previous one
computes, and copies results back into pinned memory without blocking. Streaming whole files
through the runner is `inference.predict`; the front ends reach both through
`inference.pipeline`.

Imports torch, numpy and the package's pure modules only, so `benchmarks/gpu_bench.py` can use the
engine on a torch-only machine.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_allbag.model.devices import autocast_dtype, default_batch_size, device_description
from napari_allbag.model.networks import CLASS_NAMES, MODEL_NAMES, decide
from napari_allbag.progress import Progress

#: Batches submitted to the device before waiting for the oldest (upload overlaps compute).
PIPELINE_DEPTH = 2


@dataclass
class CellPredictions:
    """The ensemble's output for N cells: probabilities (N, 3, 2), labels (1 = ALL), confidence."""

    probs: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    #: Set by `inference.decision.judge` (rule, calibration, TTA, review); None: the paper's
    #: rule on the raw probabilities, nothing flagged.
    ensemble_p_all: np.ndarray | None = None
    spread: np.ndarray | None = None
    review: np.ndarray | None = None
    review_reason: np.ndarray | None = None

    @classmethod
    def from_probs(cls, probs: np.ndarray) -> CellPredictions:
        probs = np.asarray(probs, dtype=np.float32).reshape(-1, len(MODEL_NAMES), len(CLASS_NAMES))
        labels, confidence = decide(probs)
        return cls(probs, labels.astype(np.int64), confidence.astype(np.float32))

    @classmethod
    def from_judged(cls, judged: Any) -> CellPredictions:
        """From an `inference.decision.Judged`."""
        return cls(
            np.asarray(judged.probs, np.float32),
            np.asarray(judged.labels, np.int64),
            np.asarray(judged.confidence, np.float32),
            judged.p_all,
            judged.spread,
            judged.review,
            judged.review_reason,
        )

    def take(self, rows: np.ndarray) -> CellPredictions:
        """The predictions of `rows` only (every per-cell field indexed alike)."""

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        return CellPredictions(
            self.probs[rows],
            self.labels[rows],
            self.confidence[rows],
            pick(self.ensemble_p_all),
            pick(self.spread),
            pick(self.review),
            pick(self.review_reason),
        )

    @property
    def flagged(self) -> np.ndarray:
        """Cells flagged for review (N,) bool."""
        return self.review if self.review is not None else np.zeros(len(self), bool)

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
        n = len(self)
        ensemble = self.ensemble_p_all
        if ensemble is None:  # the paper's rule: P(ALL) whose label is the rule's
            ensemble = np.where(self.labels == 1, self.confidence, 1.0 - self.confidence)
        return {
            "p_all_model_a": p_all[:, 0],
            "p_all_model_b": p_all[:, 1],
            "p_all_combined": p_all[:, 2],
            "label": self.label_names,
            "confidence": self.confidence,
            "p_all": np.asarray(ensemble, np.float32),
            "tta_spread": self.spread
            if self.spread is not None
            else np.full(n, np.nan, np.float32),
            "review": self.flagged,
            "review_reason": (
                self.review_reason if self.review_reason is not None else np.full(n, "", object)
            ),
        }


# ----------------------------------------------------------------------------- the batch runner


class PendingBatch:
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

    def submit(self, batch: torch.Tensor) -> PendingBatch:
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
                return PendingBatch(probs.cpu(), count)
            host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            event = torch.cuda.Event()
            event.record(compute)
            return PendingBatch(host, count, event, keep=batch)

    def run(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities (B, 3, 2) float32 for a uint8 (B, S, S, 3) host batch (waits)."""
        return self.submit(batch).result()


def check_crops(crops: np.ndarray) -> np.ndarray:
    """`crops` as an (N, S, S, 3) uint8 array; a ValueError saying what is wrong otherwise."""
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
    engine: str | None = "torch",
) -> Generator[Progress, None, CellPredictions]:
    """Classify uint8 crops (N, S, S, 3) in batches; yields Progress, returns CellPredictions.

    `engine` is one of `inference.engines.ENGINES` ("auto": the fastest installed on the CPU).
    """
    from napari_allbag.inference.engines import engine_runner

    crops = check_crops(crops)
    total = int(crops.shape[0])
    if total == 0:
        return CellPredictions.empty()
    runner = engine_runner(bundle, device, batch_size, compile, engine, int(crops.shape[1]))
    probs = np.empty((total, len(MODEL_NAMES), len(CLASS_NAMES)), np.float32)
    yield Progress(0, total, "classify", runner.description)
    start = time.perf_counter()
    in_flight: deque[tuple[int, int, Any]] = deque()

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
