"""_lazy: a subpackage's re-exports load their module on first use, and only then."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_allbag._lazy import lazy_exports


def test_a_name_loads_its_module_on_first_use():
    code = (
        "import sys, napari_allbag.evaluation as e; "
        "before = 'napari_allbag.evaluation.report' in sys.modules; "
        "f = e.build_report; "
        "print(before, 'napari_allbag.evaluation.report' in sys.modules, f.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "napari_allbag.evaluation.report"]


def test_unknown_names_and_dir():
    getattr_, dir_ = lazy_exports("napari_allbag.evaluation", {"build_report": "report"})
    from napari_allbag.evaluation.report import build_report

    assert getattr_("build_report") is build_report
    assert dir_() == ["build_report"]
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        getattr_("nothing")
    broken, _ = lazy_exports("napari_allbag.evaluation", {"gone": "no_such_module"})
    with pytest.raises(ModuleNotFoundError):
        broken("gone")
