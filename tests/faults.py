"""Faults for the tests: a full disk, a read-only folder, a write that fails part-way, a model
that gives NaN (`nan_probabilities`).

Two ways, said in each test that uses them:
- `small_filesystem` mounts a real tiny tmpfs (full after `size`, or read-only), which needs
  root (the tests here run as root, where `chmod` does not stop writes); it skips elsewhere.
- `fail_writes` / `fail_syncs` monkeypatch the one place `io.atomic` opens and syncs temporary
  files, so every user can run them.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from napari_allbag.io import atomic


@contextmanager
def small_filesystem(folder: Path, size: str = "256k", read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `folder` (read-only if asked); skips without root."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root on Linux")
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


class _FailingFile:
    """A file object whose writes fail with `code` once `budget` bytes were written."""

    def __init__(self, inner, code: int, budget: int):
        self._inner, self._code, self._budget = inner, code, budget

    def write(self, data):
        self._budget -= len(data)
        if self._budget < 0:
            raise OSError(self._code, os.strerror(self._code))
        return self._inner.write(data)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._inner.close()


def fail_writes(monkeypatch, code: int = errno.ENOSPC, after_bytes: int = 0) -> None:
    """Every temporary file `io.atomic` opens fails with `code` after `after_bytes` bytes."""
    real_open = atomic._open_temp
    monkeypatch.setattr(
        atomic,
        "_open_temp",
        lambda path, text: _FailingFile(real_open(path, text), code, after_bytes),
    )


def refuse_writes(monkeypatch, code: int = errno.EROFS) -> None:
    """Creating any temporary file fails with `code` (a read-only folder, as root sees none)."""

    def refuse(path, text):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(atomic, "_open_temp", refuse)


def fail_syncs(monkeypatch, code: int = errno.ENOSPC) -> None:
    """Every sync of `io.atomic` fails with `code` (a full disk often reports itself there)."""

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic, "_fsync_fd", fail)


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of `io.atomic` (and partial bundle folders) anywhere under `folder`."""
    return sorted(
        p for p in Path(folder).rglob(".*") if p.name.endswith(".tmp") or ".partial-" in p.name
    )


def nan_probabilities(monkeypatch, column: str = "p_all_combined") -> None:
    """Every cell's `column` probability becomes NaN (as a damaged bundle would give)."""
    import numpy as np

    from napari_allbag.inference import classify

    real_columns = classify.CellPredictions.columns

    def with_nan(self):
        columns = real_columns(self)
        columns[column] = np.full(len(columns[column]), np.nan)
        return columns

    monkeypatch.setattr(classify.CellPredictions, "columns", with_nan)
