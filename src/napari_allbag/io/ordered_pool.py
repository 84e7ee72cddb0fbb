"""Run a task over many items in worker processes, results in order, a bounded number in flight.

Used to segment thousands of files on all cores with bounded memory (`segmentation`,
`cli.segment`). Large arrays in a task's result (crops, label images) do not travel through the
pool's pipe: the worker pickles the result with protocol 5 and writes the arrays' buffers to a
spool file (on /dev/shm where there is one), the parent reads that file in one call and rebuilds
the result around it (`_spooled_call`, `_unspool`). Pickling 300 KB crops through the pipe cost the
parent more than the worker's segmentation saved: two workers were slower than one. Each chunk in
flight has its own spool file, a *slot*, written over in place by the next chunk that gets it: a
new file for every chunk had the kernel find and zero fresh pages for each crop (about 0.2 ms of
a worker's time per cell, an eighth of its work; benchmarks/bench_segment.py --scaling).

Workers are forked from a "forkserver" (a clean single-threaded process started once, so safe
when the parent runs threads: Qt, torch), which imports the task's module and the `preload`
modules once: a spawned worker spent about a second importing scipy and scikit-image, a
fifth of the run on 1,860 cells (benchmarks/bench_segment.py --scaling). Where there is no
forkserver (Windows) they are spawned. Workers see the environment variables of the moment the
forkserver started (the first pool). Each worker uses one OpenCV thread. As with any spawn
pool, a script that calls this must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from napari_allbag.io.allocator import tune_allocator

T = TypeVar("T")
R = TypeVar("R")

WORKER_DIED = "the worker process died while working on this item (out of memory?)"
#: Results whose out-of-band buffers total at least this many bytes go through a spool file.
SPOOL_MIN_BYTES = 32 * 1024
#: Modules the forkserver imports when it starts (`ordered_map`'s `preload` and tasks' modules).
_PRELOAD: set[str] = {__name__}


def ordered_map(
    task: Callable[..., R],
    items: Iterable[T],
    task_args: tuple[Any, ...] = (),
    workers: int = 2,
    max_in_flight: int | None = None,
    on_worker_death: Callable[[T, str], R] | None = None,
    chunk_size: int = 1,
    preload: Iterable[str] = (),
) -> Iterator[R]:
    """Yield ``task(item, *task_args)`` for each item, in order, from `workers` processes.

    ``workers=1`` runs the task in this process (no pool, nothing to pickle). Items go to the
    workers `chunk_size` at a time (fewer round trips for short tasks: one small image each).

    `task` must be picklable (a module-level function). At most `max_in_flight` (default
    ``4 * workers`` items, at least two chunks per worker) items are submitted and not yet yielded, and `items` is consumed lazily.
    A worker that dies (killed for memory, a crashing decoder) breaks the pool: the items then in
    flight are re-run one at a time in a single-worker pool, so that only an item that kills
    its worker again gives ``on_worker_death(item, WORKER_DIED)`` (or raises BrokenProcessPool
    when no `on_worker_death` is given), and the rest go on in a new pool. Closing the iterator
    early cancels what has not started and waits for what has.

    `preload`: modules the task imports when it runs (the task's own module is always
    preloaded), imported once in the forkserver instead of in every worker. They count only
    until this process's forkserver starts (its first pool); later ones are imported per worker.
    """
    workers = max(1, int(workers))
    if workers == 1:
        yield from (task(item, *task_args) for item in items)
        return
    _PRELOAD.update(name for name in (task.__module__, *preload) if name != "__main__")
    spool = _spool_folder()
    try:
        chunk_size = max(1, int(chunk_size))
        chunks = (
            max(1, max_in_flight // chunk_size)
            if max_in_flight
            else max(2 * workers, 4 * workers // chunk_size)
        )
        yield from _pooled(
            _chunks(iter(items), chunk_size),
            (spool, task, *task_args),
            workers,
            chunks,
            on_worker_death,
        )
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _pooled(chunks, spooled_args, workers, max_chunks, on_worker_death):
    """`ordered_map`'s loop: submit up to `max_chunks`, yield in order, survive a dead worker."""
    pool = _new_pool(workers)
    spool = spooled_args[0]
    slots = [os.path.join(spool, f"slot-{k}.buffers") for k in range(max_chunks)]
    pending: deque[tuple[list, Future | None, str]] = deque()
    try:
        while True:
            try:
                _submit_more(pool, pending, chunks, slots, spooled_args)
                if not pending:
                    return
                outcomes = _unspool(pending[0][1].result())
            except BrokenProcessPool:
                stranded = [item for chunk, _, _ in pending for item in chunk]
                slots.extend(slot for _, _, slot in pending)
                pending.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                yield from _run_one_at_a_time(stranded, spooled_args, on_worker_death)
                pool = _new_pool(workers)
                continue
            slots.append(pending.popleft()[2])  # read: the next chunk may write over it
            yield from outcomes
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit_more(pool, pending: deque, chunks, slots: list[str], spooled_args) -> None:
    """Submit chunks while a spool slot is free (one per chunk in flight); a chunk the broken
    pool refused stays in `pending` (a worker can die while chunks are still being submitted)."""
    while slots:
        chunk = next(chunks, None)
        if chunk is None:
            return
        slot = slots.pop()
        try:
            future = pool.submit(_spooled_call, chunk, slot, *spooled_args)
        except BrokenProcessPool:
            pending.append((chunk, None, slot))
            raise
        pending.append((chunk, future, slot))


def _run_one_at_a_time(items, spooled_args, on_worker_death):
    """Run items one by one in a single worker, so that a death names its item exactly."""
    pool = _new_pool(1)
    try:
        for item in items:
            try:
                yield _unspool(pool.submit(_spooled_call, [item], None, *spooled_args).result())[0]
            except BrokenProcessPool:
                if on_worker_death is None:
                    raise
                yield on_worker_death(item, WORKER_DIED)
                pool.shutdown(wait=True)
                pool = _new_pool(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Spooled:
    """A result pickled (protocol 5) with its large buffers in `path`, `sizes` bytes each;
    `slot`: the file is a slot, kept for the next chunk (else a file of its own, removed once
    read)."""

    data: bytes
    path: str
    sizes: list[int]
    slot: bool = False


def _spool_folder() -> str:
    """A private folder for spool files: in /dev/shm (memory) where it can be written."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="napari-allbag-spool-", dir=base)


def _spooled_call(
    chunk: list, slot: str | None, spool: str, task: Callable[..., Any], *task_args: Any
) -> Any:
    """Run the task on each item of `chunk` (in a worker): a list of results, or `_Spooled`
    when they hold large arrays, written over the `slot` file in place (its pages are reused:
    no truncation, the sizes say what is this chunk's) or, without one, to a new file."""
    result = [task(item, *task_args) for item in chunk]
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    if sum(view.nbytes for view in views) < SPOOL_MIN_BYTES:
        return result
    if slot is None:
        handle, path = tempfile.mkstemp(dir=spool, suffix=".buffers")
    else:
        handle, path = os.open(slot, os.O_WRONLY | os.O_CREAT, 0o600), slot
    try:
        with os.fdopen(handle, "wb") as out:
            for view in views:
                out.write(view)
    except OSError:  # a full /dev/shm: send the result through the pipe instead
        Path(path).unlink(missing_ok=True)
        return result
    return _Spooled(data, path, [view.nbytes for view in views], slot is not None)


def _unspool(outcome: Any) -> Any:
    """The task's result back from a `_Spooled` (arrays are views of one writable buffer)."""
    if not isinstance(outcome, _Spooled):
        return outcome
    path = Path(outcome.path)
    try:
        memory = np.empty(sum(outcome.sizes), np.uint8)  # every byte is read over: no zeroing
        with open(path, "rb", buffering=0) as source:
            if source.readinto(memory) != memory.nbytes:
                raise OSError(f"spool file {path} is shorter than its result")
    finally:
        if not outcome.slot:
            path.unlink(missing_ok=True)
    view, buffers, start = memoryview(memory), [], 0
    for size in outcome.sizes:
        buffers.append(view[start : start + size])
        start += size
    return pickle.loads(outcome.data, buffers=buffers)


def _worker_init() -> None:
    """One OpenCV thread per worker process, freed buffers kept for reuse (`allocator`);
    Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    tune_allocator()


def _new_pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose `workers` processes have all started. The executor starts them one per
    submission; a worker dying while the next one was being started (Python 3.11) left that
    one unterminated, and shutting the broken pool down then waited for it forever (seen 2 in
    about 40 runs of the dying-worker test). With all of them running before any task, a
    death only ever meets processes the executor knows and terminates."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(sorted(_PRELOAD))  # only until the server starts
    else:  # pragma: no cover - Windows
        context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init)
    for started in [pool.submit(os.getpid) for _ in range(workers)]:
        started.result()
    return pool
