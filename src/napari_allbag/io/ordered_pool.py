"""Run a task over many items in worker processes, results in order, a bounded number in flight.

Used to segment thousands of files on all cores with bounded memory (`segmentation`,
`cli.segment`). Each worker has its own pipe: a chunk of items goes to the least loaded worker
as one small message, and its result comes back as another (`_Pool`). ProcessPoolExecutor's
queues and threads cost the parent about 0.1 ms more per cell, enough to keep two workers
under 1.6x one, and one dead worker broke its whole pool (benchmarks/bench_segment.py
--scaling). Large arrays in a result (crops, label images) do not travel through the pipe: the
worker pickles the result with protocol 5 and writes the arrays' buffers to a spool file (on
/dev/shm where there is one), the parent reads that file in one call and rebuilds the result
around it (`_spooled_call`, `_unspool`). Pickling 300 KB crops through the pipe cost the parent
more than the worker's segmentation saved: two workers were slower than one. Each chunk in
flight has its own spool file, a *slot*, written over in place by the next chunk that gets it: a
new file for every chunk had the kernel find and zero fresh pages for each crop (about 0.2 ms of
a worker's time per cell, an eighth of its work).

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
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
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
#: Arrays smaller than this stay inside the pickle: a segmented cell holds a dozen arrays of a
#: few bytes besides its crop, and each out-of-band buffer is one more write and one more view.
IN_BAND_BYTES = 4096
#: Modules the forkserver imports when it starts (`ordered_map`'s `preload` and tasks' modules).
_PRELOAD: set[str] = {__name__}

#: Chunks sent to one worker and not yet returned: the one it runs and one ready behind it, so
#: that it never waits for a round trip; more would tie work to a worker that may be slow.
DEPTH = 2


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
    `task` and `task_args` must be picklable (a module-level function); they go to each worker
    once, when it starts. At most `max_in_flight` items (default ``4 * workers``, at least
    ``2 * DEPTH`` chunks per worker) are submitted and not yet yielded, `items` is consumed
    lazily, and each worker holds at most `DEPTH` chunks: the rest wait for the first free one.
    A task's exception is raised here, with the worker's traceback as a note. A worker that
    dies (killed for memory, a crashing decoder) costs only its own chunks: their items are
    re-run one at a time in a worker of their own, so that only an item that kills its worker
    again gives ``on_worker_death(item, WORKER_DIED)`` (or raises BrokenProcessPool when no
    `on_worker_death` is given); a new worker takes the dead one's place. Closing the iterator
    early skips what has not started and waits for what has.

    `preload`: modules the task imports when it runs (the task's own module is always
    preloaded), imported once in the forkserver instead of in every worker. They count only
    until this process's forkserver starts (its first pool); later ones are imported per worker.
    """
    workers = max(1, int(workers))
    if workers == 1:
        yield from (task(item, *task_args) for item in items)
        return
    _PRELOAD.update(name for name in (task.__module__, *preload) if name != "__main__")
    chunk_size = max(1, int(chunk_size))
    max_chunks = (
        max(1, max_in_flight // chunk_size)
        if max_in_flight
        else max(2 * DEPTH * workers, 4 * workers // chunk_size)
    )
    items, pool = iter(items), _Pool(workers, task, task_args)
    try:
        chunks = iter(lambda: list(itertools.islice(items, chunk_size)), [])
        yield from _in_order(pool, chunks, max_chunks, on_worker_death)
    finally:
        pool.close()


def _in_order(pool: _Pool, chunks: Iterator[list], max_chunks: int, on_worker_death) -> Iterator:
    """`ordered_map`'s loop: keep up to `max_chunks` chunks in flight (one spool slot each),
    hold the ones that finish early, yield in order."""
    slots = [os.path.join(pool.spool, f"slot-{k}.buffers") for k in range(max_chunks)]
    finished: dict[int, tuple[Any, str]] = {}  # chunk index -> (outcome, its slot)
    sent = yielded = 0
    while True:
        while slots and pool.has_room() and (chunk := next(chunks, None)):
            pool.submit(sent, chunk, slots.pop())
            sent += 1
        if yielded in finished:
            outcome, slot = finished.pop(yielded)
            results = _unspool(outcome)
            slots.append(slot)  # read: the next chunk may write over it
            yielded += 1
            yield from results
        elif yielded == sent:
            return
        else:
            for index, outcome, slot in pool.receive(on_worker_death):
                finished[index] = (outcome, slot)


@dataclass
class _Worker:
    """A worker process, this end of its pipe, and the chunks sent to it, oldest first."""

    process: Any
    conn: Connection
    queue: deque = field(default_factory=deque)  # (chunk index, chunk, slot)


class _Pool:
    """Worker processes, each with its own pipe: a chunk goes to the least loaded one as one
    small message and its result (`_Spooled`) comes back as another. Replaces
    ProcessPoolExecutor, whose queues and threads cost this process about 0.1 ms per cell and
    whose whole pool broke when one worker died (benchmarks/bench_segment.py --scaling)."""

    def __init__(self, workers: int, task: Callable[..., Any], task_args: tuple) -> None:
        self.spool = _spool_folder()
        self.context = _context()
        self.stop = self.context.Event()
        self.job = (self.spool, task, task_args)
        self.workers = [self._start() for _ in range(workers)]

    def _start(self) -> _Worker:
        conn, child = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=_worker_loop, args=(child, self.stop, *self.job), daemon=True
        )
        process.start()
        child.close()  # so that the worker's death reads as the end of its pipe here
        return _Worker(process, conn)

    def has_room(self) -> bool:
        """Whether a worker holds fewer than `DEPTH` chunks: one running, one ready behind it.
        Chunks beyond that wait here, so that the first worker to finish takes the next one
        (a slow image delays only its own worker's queue, as with a shared queue)."""
        return any(len(worker.queue) < DEPTH for worker in self.workers)

    def submit(self, index: int, chunk: list, slot: str | None) -> None:
        worker = min(self.workers, key=lambda w: len(w.queue))
        worker.queue.append((index, chunk, slot))
        try:
            worker.conn.send((chunk, slot))
        except OSError:  # already dead: `receive` finds the end of its pipe
            pass

    def receive(self, on_worker_death) -> Iterator[tuple[int, Any, str | None]]:
        """(chunk index, outcome, slot) of each chunk that finishes next; a dead worker's
        chunks re-run item by item (`_one_at_a_time`) and it is replaced."""
        busy = {worker.conn: worker for worker in self.workers if worker.queue}
        for conn in wait(list(busy)):
            worker = busy[conn]
            try:
                ok, payload = conn.recv()
            except (EOFError, OSError):
                yield from self._replace(worker, on_worker_death)
                continue
            index, chunk, slot = worker.queue.popleft()
            if not ok:
                _raise_from_worker(*payload)
            yield index, payload, slot

    def _replace(self, dead: _Worker, on_worker_death) -> Iterator[tuple]:
        dead.process.join()
        dead.conn.close()
        self.workers[self.workers.index(dead)] = self._start()
        for index, chunk, slot in dead.queue:
            yield index, self._one_at_a_time(chunk, on_worker_death), slot

    def _one_at_a_time(self, items: list, on_worker_death) -> list:
        """Each item alone in a worker of its own, so that a death names its item exactly."""
        results, solo = [], self._start()
        try:
            for item in items:
                try:
                    solo.conn.send(([item], None))
                    ok, payload = solo.conn.recv()
                except (EOFError, OSError):
                    if on_worker_death is None:
                        raise BrokenProcessPool(f"{WORKER_DIED}: {item!r}") from None
                    results.append(on_worker_death(item, WORKER_DIED))
                    _stop([solo])
                    solo = self._start()
                    continue
                if not ok:
                    _raise_from_worker(*payload)
                results.append(_unspool(payload)[0])
        finally:
            _stop([solo])
        return results

    def close(self) -> None:
        """Skip the chunks not started, wait for those running, remove the spool."""
        self.stop.set()
        _stop(self.workers)
        shutil.rmtree(self.spool, ignore_errors=True)


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        try:
            worker.conn.send(None)
        except OSError:
            pass
        worker.conn.close()  # a worker still sending a result gets a broken pipe and ends
    for worker in workers:
        worker.process.join()


def _worker_loop(conn: Connection, stop, spool: str, task: Callable, task_args: tuple) -> None:
    """A worker: run each chunk it is sent until told to stop (None, or the pipe closed)."""
    _worker_init()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        if stop.is_set():
            continue  # the parent no longer waits for results: skip, read on to None
        chunk, slot = message
        try:
            reply = (True, _spooled_call(chunk, slot, spool, task, *task_args))
        except Exception as error:
            reply = (False, (error, traceback.format_exc()))
        try:
            _send(conn, reply)
        except OSError:
            return


def _send(conn: Connection, reply: tuple) -> None:
    try:
        conn.send(reply)
    except (pickle.PicklingError, TypeError, AttributeError) as error:  # unpicklable result
        text = traceback.format_exc()
        failure = RuntimeError(f"the task's result could not be sent: {error}")
        conn.send((False, (failure, text)))


def _raise_from_worker(error: BaseException, worker_traceback: str) -> None:
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(f"raised in a worker process:\n{worker_traceback}")
    raise error


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
    views: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        """Large buffers go to the spool (False); small ones stay in the pickle (True)."""
        view = buffer.raw()
        if view.nbytes < IN_BAND_BYTES:
            return True
        views.append(view)
        return False

    data = pickle.dumps(result, protocol=5, buffer_callback=out_of_band)
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


def _context():
    """Forkserver workers where there is one (safe under threads, modules imported once)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(sorted(_PRELOAD))  # only until the server starts
        return context
    return multiprocessing.get_context("spawn")  # pragma: no cover - Windows
