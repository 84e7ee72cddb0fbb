"""The one atomic writer: whole files, the ordinary mode (0o666 less the umask), no temporaries."""

from __future__ import annotations

import os
import stat

import pytest

from napari_allbag.io.atomic import new_file_mode, write_json_atomic, write_text_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_the_mode_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        target = tmp_path / "report.json"
        write_json_atomic(target, {"a": 1})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert os.umask(previous) == previous and new_file_mode() == 0o666 & ~previous


def test_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "log.csv"
    write_text_atomic(target, "a,b\n")
    write_text_atomic(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    assert [p.name for p in target.parent.iterdir()] == ["log.csv"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert target.read_text() == '{\n  "ok": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
