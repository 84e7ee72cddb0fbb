"""RunLock: of processes racing for one run folder or output file exactly one wins; the others are
told who holds it; stale locks of dead processes are taken over, other hosts' are refused."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket

import pytest

from napari_allbag.io.lock import LockHeld, RunLock, lock_path_for

RACERS = 4


def _race(target: str, barrier, results, release) -> None:
    """One racing process: wait for all, try the lock, report; the winner holds until told."""
    barrier.wait(timeout=60)
    try:
        with RunLock(target, command=f"racer {os.getpid()}"):
            results.put(("won", os.getpid(), ""))
            release.wait(timeout=60)
    except LockHeld as error:
        results.put(("held", os.getpid(), str(error)))


def _take_and_die(target: str) -> None:
    """Take the lock and end without releasing it (as kill -9 would)."""
    RunLock(target, command="killed run").acquire()
    os._exit(0)


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_processes_racing_for_one_target_exactly_one_wins(tmp_path, kind):
    target = tmp_path / ("run" if kind == "folder" else "results.csv")
    context = multiprocessing.get_context("spawn")
    barrier, results, release = context.Barrier(RACERS), context.Queue(), context.Event()
    racers = [
        context.Process(target=_race, args=(str(target), barrier, results, release))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    # The winner reports before it waits for `release`, so all outcomes arrive while it holds
    # the lock (a slow racer is never let in by an early release).
    outcomes = [results.get(timeout=120) for _ in range(RACERS)]
    holder = json.loads(lock_path_for(target).read_text())
    release.set()
    for racer in racers:
        racer.join(timeout=60)
    winners = [pid for verdict, pid, _ in outcomes if verdict == "won"]
    assert len(winners) == 1
    assert holder["pid"] == winners[0] and holder["host"] == socket.gethostname()
    for verdict, _, message in outcomes:
        if verdict == "held":
            assert f"pid {winners[0]}" in message and str(target) in message
            assert str(lock_path_for(target)) in message  # how to remove it
    assert not lock_path_for(target).exists()  # the winner released it


def test_the_lock_file_lies_beside_its_target(tmp_path):
    assert lock_path_for(tmp_path / "results.csv") == tmp_path.resolve() / "results.csv.lock"
    assert lock_path_for(tmp_path / "run") == tmp_path.resolve() / "run.lock"


def test_released_on_exceptions_and_held_meanwhile(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(ValueError, match="inside"):
        with RunLock(target, command="first") as lock:
            assert lock.held and lock_path_for(target).is_file()
            with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
                RunLock(target).acquire()  # this process is alive: held
            raise ValueError("inside")
    assert not lock_path_for(target).exists()
    with RunLock(target) as again:
        assert again.note == ""


def test_a_dead_processs_lock_is_taken_over_with_a_note(tmp_path):
    target = tmp_path / "run"
    context = multiprocessing.get_context("spawn")
    dead = context.Process(target=_take_and_die, args=(str(target),))
    dead.start()
    dead.join(timeout=120)
    stale = json.loads(lock_path_for(target).read_text())
    assert stale["pid"] == dead.pid
    with RunLock(target) as lock:
        assert "stale" in lock.note and f"pid {dead.pid}" in lock.note
        assert json.loads(lock_path_for(target).read_text())["pid"] == os.getpid()
    assert not lock_path_for(target).exists()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    target = tmp_path / "results.csv"
    holder = {"pid": 1, "host": "elsewhere-42", "started": "2026-01-01T00:00:00+00:00"}
    lock_path_for(target).write_text(json.dumps(holder))
    with pytest.raises(LockHeld) as caught:
        RunLock(target).acquire()
    message = str(caught.value)
    assert "elsewhere-42" in message and "another computer" in message
    assert f"delete {lock_path_for(target)}" in message
    assert lock_path_for(target).is_file()  # never removed for another host


def test_a_damaged_lock_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr("napari_allbag.io.lock.SETTLE_S", 0.2)
    target = tmp_path / "run"
    lock_path_for(target).write_text("")  # its writer died between create and write
    with RunLock(target) as lock:
        assert "damaged" in lock.note


def test_release_never_removes_another_processs_lock(tmp_path):
    target = tmp_path / "run"
    lock = RunLock(target).acquire()
    other = {"pid": 1, "host": "elsewhere", "token": "not-ours"}
    lock_path_for(target).write_text(json.dumps(other))
    lock.release()
    assert json.loads(lock_path_for(target).read_text()) == other
