"""Run a task over many items in worker processes, results in order, a bounded number in flight.

Used to segment thousands of files on all cores with bounded memory (`segmentation`,
`cli.segment`). Workers are started with "spawn" (safe when the parent runs threads: Qt,
torch) and use one OpenCV thread each. As with any spawn pool, a script that calls this must
guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import cv2

T = TypeVar("T")
R = TypeVar("R")

WORKER_DIED = "the worker process died while working on this item (out of memory?)"


def ordered_map(
    task: Callable[..., R],
    items: Iterable[T],
    task_args: tuple[Any, ...] = (),
    workers: int = 2,
    max_in_flight: int | None = None,
    on_worker_death: Callable[[T, str], R] | None = None,
) -> Iterator[R]:
    """Yield ``task(item, *task_args)`` for each item, in order, from `workers` processes.

    ``workers=1`` runs the task in this process (no pool, nothing to pickle).

    `task` must be picklable (a module-level function). At most `max_in_flight` (default
    ``4 * workers``) items are submitted and not yet yielded, and `items` is consumed lazily.
    A worker that dies (killed for memory, a crashing decoder) breaks the pool: the items then in
    flight are re-run one at a time in a single-worker pool, so that only an item that kills
    its worker again gives ``on_worker_death(item, WORKER_DIED)`` (or raises BrokenProcessPool
    when no `on_worker_death` is given), and the rest go on in a new pool. Closing the iterator
    early cancels what has not started and waits for what has.
    """
    workers = max(1, int(workers))
    if workers == 1:
        yield from (task(item, *task_args) for item in items)
        return
    max_in_flight = max(1, max_in_flight or 4 * workers)
    items = iter(items)
    pool = _new_pool(workers)
    pending: deque[tuple[T, Future]] = deque()
    try:
        while True:
            while len(pending) < max_in_flight:
                item = next(items, _END)
                if item is _END:
                    break
                pending.append((item, pool.submit(task, item, *task_args)))
            if not pending:
                return
            item, future = pending[0]
            try:
                outcome = future.result()
            except BrokenProcessPool:
                stranded = [stranded_item for stranded_item, _ in pending]
                pending.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                yield from _run_one_at_a_time(task, stranded, task_args, on_worker_death)
                pool = _new_pool(workers)
                continue
            pending.popleft()
            yield outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def _run_one_at_a_time(task, items, task_args, on_worker_death):
    """Run items one by one in a single worker, so that a death names its item exactly."""
    pool = _new_pool(1)
    try:
        for item in items:
            try:
                yield pool.submit(task, item, *task_args).result()
            except BrokenProcessPool:
                if on_worker_death is None:
                    raise
                yield on_worker_death(item, WORKER_DIED)
                pool.shutdown(wait=True)
                pool = _new_pool(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_init() -> None:
    """One OpenCV thread per worker process; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init)
