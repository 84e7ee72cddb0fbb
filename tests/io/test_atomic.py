"""io.atomic: whole files or none; on a full disk or a read-only folder one clear `OutputError`
naming the file and the fix, the previous file intact and no temporary file left."""

from __future__ import annotations

import errno
import os
import pickle
import stat

import numpy as np
import pytest

from napari_allbag.io.atomic import (
    AtomicCsv,
    OutputError,
    atomic_path,
    remove_stale_temps,
    replace_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from tests.faults import fail_syncs, fail_writes, leftovers, refuse_writes, small_filesystem


def test_atomic_text_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "log.csv"
    write_text_atomic(target, "a,b\n")
    write_text_atomic(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    assert [p.name for p in target.parent.iterdir()] == ["log.csv"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


@pytest.mark.parametrize("where", ["write", "sync"])
def test_disk_full_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch, where):
    # simulated (monkeypatch): ENOSPC from a write, or from the sync that reports it late
    target = tmp_path / "report.json"
    write_json_atomic(target, {"old": 1})
    (fail_writes if where == "write" else fail_syncs)(monkeypatch, errno.ENOSPC)
    with pytest.raises(OutputError) as caught:
        write_json_atomic(target, {"new": 2})
    message = str(caught.value)
    assert str(target) in message and "full" in message and "Free some space" in message
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert leftovers(tmp_path) == []


def test_a_read_only_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    # simulated (monkeypatch): as root, chmod does not stop writes
    refuse_writes(monkeypatch, errno.EROFS)
    with pytest.raises(OutputError, match="read-only.*Choose an output folder"):
        write_bytes_atomic(tmp_path / "x.png", b"png")
    assert leftovers(tmp_path) == []


def test_permission_denied_by_chmod(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 555 folder; the monkeypatched test covers this")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot be written by you"):
            write_text_atomic(folder / "a.txt", "a")
    finally:
        folder.chmod(0o755)


def test_a_real_full_file_system(tmp_path):
    # real: a 64 kB tmpfs (needs root; skipped elsewhere)
    with small_filesystem(tmp_path / "disk", size="64k") as disk:
        write_bytes_atomic(disk / "a.bin", b"a" * 1000)
        with pytest.raises(OutputError, match="full"):
            write_bytes_atomic(disk / "a.bin", b"b" * 200_000)
        assert (disk / "a.bin").read_bytes() == b"a" * 1000
        assert leftovers(disk) == []


def test_a_real_read_only_file_system(tmp_path):
    with small_filesystem(tmp_path / "ro", read_only=True) as disk:
        with pytest.raises(OutputError, match="read-only"):
            write_text_atomic(disk / "a.txt", "a")


def test_safetensors_write_errors_become_output_errors(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    with small_filesystem(tmp_path / "disk", size="64k") as disk:
        with pytest.raises(OutputError, match="full"):
            with atomic_path(disk / "w.safetensors") as temp:
                save_file({"w": torch.zeros(100_000)}, str(temp))
        assert leftovers(disk) == [] and not (disk / "w.safetensors").exists()


def test_atomic_path_removes_the_temp_and_passes_other_errors_on(tmp_path):
    target = tmp_path / "plot.png"
    with pytest.raises(ValueError, match="drawing failed"):
        with atomic_path(target) as temp:
            temp.write_bytes(b"half")
            raise ValueError("drawing failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as temp:
        temp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def _table(path, on_error, rows, fail):
    with AtomicCsv(path, ["a", "b"], on_error=on_error) as table:
        for row in range(rows):
            table.write_row([row, row * 2])
        if fail:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("on_error", "kept_as"), [("discard", None), ("partial", ".partial"), ("commit", "")]
)
def test_csv_on_interruption(tmp_path, on_error, kept_as):
    path = tmp_path / "cells.csv"
    with pytest.raises(KeyboardInterrupt):
        _table(path, on_error, 3, fail=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ([] if kept_as is None else [f"cells.csv{kept_as}"])
    if kept_as is not None:
        assert (tmp_path / names[0]).read_text().splitlines() == ["a,b", "0,0", "1,2", "2,4"]


def test_csv_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    # simulated (monkeypatch): the disk fills after 20 bytes of rows
    fail_writes(monkeypatch, errno.ENOSPC, after_bytes=20)
    path = tmp_path / "results.csv"
    with pytest.raises(OutputError, match=f"{path}.*full"):
        _table(path, "commit", 50, fail=False)
    assert list(tmp_path.iterdir()) == []


def test_output_error_crosses_processes(tmp_path):
    error = OutputError(tmp_path / "a.csv", OSError(errno.ENOSPC, "No space left on device"))
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, OutputError) and str(again) == str(error)
    assert again.path == error.path


def test_replace_atomic_names_the_target(tmp_path):
    source = tmp_path / "new"
    source.mkdir()
    dest = tmp_path / "old"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")  # a non-empty folder cannot be replaced
    with pytest.raises(OutputError, match=str(dest)):
        replace_atomic(source, dest)


def test_remove_stale_temps_only_removes_temporary_files(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".log.csv.1a2b3c4d.tmp", tmp_path / "sub" / ".x.json.00000000.tmp"]
    kept = [tmp_path / "log.csv", tmp_path / "notes.tmp", tmp_path / "sub" / "x.json"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_the_mode_open_would_give(tmp_path, umask):
    # evaluate's report.json/report.txt were 0600 while every other output was 0644
    from safetensors.numpy import save_file

    from napari_allbag.io.atomic import atomic_path, new_file_mode

    previous = os.umask(umask)
    try:
        assert new_file_mode() == 0o666 & ~umask
        write_json_atomic(tmp_path / "report.json", {"a": 1})
        with atomic_path(tmp_path / "w.safetensors") as temp:  # a library's own (0600) file
            save_file({"x": np.zeros(2, np.float32)}, str(temp))
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(("report.json", "w.safetensors", "plain.txt"), 0o666 & ~umask)
