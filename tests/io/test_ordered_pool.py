"""Ordered, bounded process-pool map: order, laziness, and surviving a worker that dies."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from napari_allbag.io import ordered_pool
from napari_allbag.io.ordered_pool import WORKER_DIED, ordered_map


def square_or_die(item: int, offset: int) -> int:
    """A task whose worker process dies on 13, as one killed for memory would."""
    if item == 13:
        os._exit(1)
    return item * item + offset


def test_results_come_in_order_with_task_args_in_a_pool_and_in_process():
    items = [i for i in range(20) if i != 13]
    expected = [i * i + 5 for i in items]
    assert list(ordered_map(square_or_die, items, (5,), workers=2)) == expected
    assert list(ordered_map(square_or_die, items, (5,), workers=1)) == expected


def test_items_are_pulled_lazily_with_a_bounded_number_in_flight():
    pulled = []

    def counting():
        for item in range(14, 44):
            pulled.append(item)
            yield item

    for consumed, _ in enumerate(
        ordered_map(square_or_die, counting(), (0,), workers=2, max_in_flight=3), start=1
    ):
        assert len(pulled) - consumed <= 3
    assert len(pulled) == 30


@pytest.mark.parametrize(
    ("items", "max_in_flight", "chunk_size"),
    [
        ([10, 11, 12, 13, 14, 15, 16], 4, 1),
        # the first item kills its worker at once, often while the rest are still submitted
        ([13, *range(14, 40)], 27, 1),
        # several deaths in one run, in chunks: each replaced worker takes up the work
        ([13, 1, 2, 13, 3, 13, *range(14, 30)], None, 2),
    ],
)
def test_a_worker_that_dies_costs_only_its_own_item(items, max_in_flight, chunk_size):
    outcomes = list(
        ordered_map(
            square_or_die,
            items,
            (0,),
            workers=2,
            max_in_flight=max_in_flight,
            on_worker_death=lambda item, why: (item, why),
            chunk_size=chunk_size,
        )
    )
    assert outcomes == [(i, WORKER_DIED) if i == 13 else i * i for i in items]
    assert not multiprocessing.active_children()  # the dead workers' successors ended too


def test_without_a_handler_a_dying_worker_raises():
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        list(ordered_map(square_or_die, [13], (0,), workers=2))


def crops_for(item: int, side: int) -> dict:
    """A result with large arrays (crops) and small fields, as a segmented file gives."""
    rng = np.random.default_rng(item)
    return {"item": item, "crops": rng.integers(0, 255, (item % 3 + 1, side, side, 3), np.uint8)}


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_large_arrays_come_back_through_the_spool_intact_and_writable(chunk_size, monkeypatch):
    made = []
    real = ordered_pool._spool_folder
    monkeypatch.setattr(ordered_pool, "_spool_folder", lambda: made.append(real()) or made[-1])
    items = list(range(7))
    found = list(ordered_map(crops_for, items, (120,), workers=2, chunk_size=chunk_size))
    assert [result["item"] for result in found] == items
    for result in found:
        expected = crops_for(result["item"], 120)["crops"]
        np.testing.assert_array_equal(result["crops"], expected)
        result["crops"][0, 0, 0] = 1  # writable, as a pickled array would be
    assert expected.nbytes > ordered_pool.SPOOL_MIN_BYTES  # these did go through the spool
    assert len(made) == 1 and not Path(made[0]).exists()  # spool folder removed at the end


def test_spool_slots_are_written_over_in_place_and_results_stay_intact(monkeypatch):
    """A chunk's spool file is a slot that the next chunk writes over (no new file, no fresh
    pages per crop); a result shorter than the slot's last one must not pick up its tail."""
    paths = []
    real = ordered_pool._unspool

    def recording(outcome):
        if isinstance(outcome, ordered_pool._Spooled):
            paths.append(outcome.path)
        return real(outcome)

    monkeypatch.setattr(ordered_pool, "_unspool", recording)
    items = [5, 4, 3, 2, 1, 0] * 3  # 3, 2, 1, 3, 2, 1 crops: shorter results over longer ones
    found = list(ordered_map(crops_for, items, (120,), workers=2, max_in_flight=2))
    assert [result["item"] for result in found] == items
    for result in found:
        np.testing.assert_array_equal(result["crops"], crops_for(result["item"], 120)["crops"])
    assert len(paths) == len(items) and len(set(paths)) <= 2  # two slots for two in flight


def fail_on_seven(item: int) -> int:
    if item == 7:
        raise ValueError(f"no sevens ({item})")
    return item


def test_a_tasks_exception_is_raised_here_with_the_workers_traceback():
    with pytest.raises(ValueError, match="no sevens") as caught:
        list(ordered_map(fail_on_seven, range(20), workers=2, chunk_size=2))
    assert "fail_on_seven" in "".join(getattr(caught.value, "__notes__", ["fail_on_seven"]))
    assert not multiprocessing.active_children()  # the pool's workers have ended


def touch_slowly(item: int, folder: str) -> int:
    """A slow task that leaves a trace of each item it ran."""
    time.sleep(0.05)
    Path(folder, f"{item}.done").touch()
    return item


def test_closing_early_skips_the_chunks_not_started_and_ends_the_workers(tmp_path):
    """All 40 items are sent to the workers at once; closing after the first result must
    not let the workers go through the rest (a user's cancel), and no worker is left."""
    stream = ordered_map(touch_slowly, range(40), (str(tmp_path),), workers=2, max_in_flight=40)
    assert next(stream) == 0
    stream.close()
    assert not multiprocessing.active_children()
    assert 1 <= len(list(tmp_path.glob("*.done"))) < 20


def sleep_then_pid(seconds: float) -> tuple[float, int]:
    time.sleep(seconds)
    return seconds, os.getpid()


def test_a_slow_item_holds_back_only_its_own_worker():
    """A worker holds at most DEPTH chunks; the others go to whichever worker is free, so
    the quick items behind a slow one do not queue behind it (a slow bright-field field
    among quick crops)."""
    items = [0.6] + [0.01] * 7 + [0.001] * 20
    outcomes = list(ordered_map(sleep_then_pid, items, workers=2, max_in_flight=8))
    assert [seconds for seconds, _ in outcomes] == items
    slow_worker = outcomes[0][1]
    ran_there = [seconds for seconds, pid in outcomes[1:8] if pid == slow_worker]
    assert len(ran_there) <= ordered_pool.DEPTH - 1  # only what was queued behind it
