"""A fresh napari process docks every widget, classifies and trains: no crash (issue 12).

The test process itself has torch loaded long ago, so the session runs in a new `python` on the
current display (the suite runs under xvfb-run): napari first, its OpenGL canvas up, then the
plugin's widgets from the manifest. On Mesa's software OpenGL (llvmpipe) that order once crashed
the process in triton's import (see napari_allbag.model.triton_loader).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_allbag.data.synthetic import write_annotated_folder
from tests.model_factory import make_tiny_bundle

SESSION = Path(__file__).with_name("fresh_gui_session.py")
#: Mesa's llvmpipe links one of these; its DRI loader puts it in the global symbol scope.
SYSTEM_LLVM = sorted(
    path
    for folder in (
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    )
    for path in glob.glob(f"{folder}/libLLVM*.so.1")
)
GLOBAL_LLVM_THEN_MODELS = """
import ctypes, os, sys
ctypes.CDLL(sys.argv[1], mode=os.RTLD_GLOBAL)  # what Mesa's DRI loader does for llvmpipe
import napari_allbag.model.networks
from torch.utils._triton import has_triton_package
print("triton usable:", has_triton_package())
"""


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run")
def test_a_fresh_napari_session_docks_classifies_and_trains(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle", seed=5)
    data = tmp_path / "annotated"
    write_annotated_folder(data, n_all=8, n_hem=8, n_subjects=2, seed=2, size=96)
    env = {
        **os.environ,
        "NAPARI_ALLBAG_CONFIG_DIR": str(tmp_path / "config"),
        "NAPARI_ALLBAG_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONFAULTHANDLER": "1",  # a crash prints the Python stack of every thread
    }
    command = [sys.executable, str(SESSION), str(bundle), str(data), str(tmp_path / "run")]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for name in ("Segment cells", "Classify cells", "Train ensemble", "Cell table"):
        assert f"docked {name}" in done.stdout
    assert "classified " in done.stdout
    assert "classified a folder: " in done.stdout
    assert "training cancelled: Cancelled" in done.stdout
    assert done.stdout.rstrip().endswith("SESSION-OK")


@pytest.mark.skipif(not SYSTEM_LLVM, reason="no system libLLVM (Mesa's llvmpipe) here")
def test_models_load_beside_a_global_llvm():
    """The crash without a display: another LLVM in the global scope, then the plugin's models."""
    command = [sys.executable, "-c", GLOBAL_LLVM_THEN_MODELS, SYSTEM_LLVM[-1]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    has_triton = importlib.util.find_spec("triton") is not None
    assert done.stdout.strip().endswith(f"triton usable: {has_triton}")
