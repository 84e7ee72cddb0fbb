"""`demo --napari` without a Qt binding: one line saying what to install, before any training."""

from __future__ import annotations

import importlib.util

import pytest

from napari_allbag.cli import qt_binding
from napari_allbag.cli.main import main


@pytest.fixture
def no_qt(monkeypatch):
    """An environment as after `pip install napari-allbag`: napari without any Qt binding."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.partition(".")[0] in qt_binding.QT_BINDINGS:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_the_installed_binding_is_found():
    found = qt_binding.installed_qt_binding()
    assert found in qt_binding.QT_BINDINGS
    assert importlib.util.find_spec(found) is not None
    assert qt_binding.missing_qt_message() is None


def test_without_qt_the_message_names_the_install(no_qt):
    assert qt_binding.installed_qt_binding() is None
    message = qt_binding.missing_qt_message()
    assert qt_binding.INSTALL_GUI in message and "\n" not in message


@pytest.mark.parametrize("extra", [[], ["--quick"]])
def test_demo_napari_stops_before_training(no_qt, tmp_path, capsys, extra):
    out_dir = tmp_path / "demo"
    code = main(["demo", "--napari", "--out", str(out_dir), "--device", "cpu", *extra])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and qt_binding.INSTALL_GUI in lines[0], captured.err
    assert lines[0].startswith("napari-allbag demo: ")
    assert "Traceback" not in captured.err and captured.out == ""
    assert not out_dir.exists()  # nothing was generated or trained


def test_demo_napari_with_a_bundle_stops_too(no_qt, tmp_path, capsys):
    assert main(["demo", "--napari", "--bundle", str(tmp_path / "missing")]) == 2
    assert qt_binding.INSTALL_GUI in capsys.readouterr().err
