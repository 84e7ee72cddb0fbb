"""Ordered, bounded process-pool map: order, laziness, and surviving a worker that dies."""

from __future__ import annotations

import os

import pytest

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


def test_a_worker_that_dies_costs_only_its_own_item():
    items = [10, 11, 12, 13, 14, 15, 16]
    outcomes = list(
        ordered_map(
            square_or_die,
            items,
            (0,),
            workers=2,
            max_in_flight=4,
            on_worker_death=lambda item, why: (item, why),
        )
    )
    assert outcomes == [100, 121, 144, (13, WORKER_DIED), 196, 225, 256]


def test_without_a_handler_a_dying_worker_raises():
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        list(ordered_map(square_or_die, [13], (0,), workers=2))
