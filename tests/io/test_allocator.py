"""io.allocator: freed image buffers are reused instead of coming back as new zeroed pages."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

#: Allocates and frees, cell after cell, arrays of the sizes one C-NMC cell's segmentation
#: makes (decoded image, grey, mask, label image, 299 px crop), writing each, and prints the
#: minor page faults of the loop (pages the kernel had to hand out and zero).
_CELL_LOOP = """
import resource, sys
import numpy as np
from napari_allbag.io.allocator import tune_allocator
print(tune_allocator())
sizes = (450 * 450 * 3, 450 * 450, 450 * 450, 450 * 450 * 4, 299 * 299 * 3, 1_200_000)
np.ones(sizes[0], np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for cell in range(300):
    arrays = [np.ones(size, np.uint8) for size in sizes]
    del arrays
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's mallopt",
)


def _faults(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "NAPARI_ALLBAG"))}
    done = subprocess.run(
        [sys.executable, "-c", _CELL_LOOP],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    tuned, faults = done.stdout.split()
    return tuned == "True", int(faults)


@glibc_only
def test_tuned_process_reuses_freed_buffers():
    tuned, faults_tuned = _faults()
    default, faults_default = _faults(NAPARI_ALLBAG_MALLOC="default")
    assert tuned and not default
    # 300 cells of about 3 MB each: glibc's default hands back the freed heap top every cell
    assert faults_default > 10 * max(faults_tuned, 100), (faults_default, faults_tuned)


@glibc_only
def test_user_malloc_settings_win():
    tuned, _ = _faults(MALLOC_TRIM_THRESHOLD_="131072")
    assert not tuned


def test_pool_workers_and_commands_tune_before_their_work(monkeypatch, tmp_path):
    """Both places that segment for the user tune first (the napari process does not)."""
    import napari_allbag.cli.info as info
    import napari_allbag.cli.main as cli_main
    from napari_allbag.io import ordered_pool

    called = []
    monkeypatch.setattr(ordered_pool, "tune_allocator", lambda: called.append("worker"))
    monkeypatch.setattr(ordered_pool.signal, "signal", lambda *args: None)
    monkeypatch.setattr(ordered_pool.cv2, "setNumThreads", lambda n: None)
    ordered_pool._worker_init()
    monkeypatch.setattr(cli_main, "tune_allocator", lambda: called.append("command"))
    monkeypatch.setattr(info, "run", lambda args: called.append("info ran") or 0)
    assert cli_main.main([]) == 2  # no command: help only
    assert cli_main.main(["info", str(tmp_path)]) == 0
    assert called == ["worker", "command", "info ran"]
