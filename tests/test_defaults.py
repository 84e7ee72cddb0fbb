"""defaults: the names the command line needs before any heavy import agree with the core."""

from __future__ import annotations

import subprocess
import sys

from napari_allbag import defaults


def test_importing_defaults_loads_no_torch_or_opencv():
    code = (
        "import sys, napari_allbag.defaults, napari_allbag.inference.columns; "
        "print(sorted({'torch', 'cv2', 'timm'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_core_uses_the_same_values():
    from napari_allbag.model import networks
    from napari_allbag.training import distributed

    assert networks.DEFAULT_BACKBONE == defaults.DEFAULT_BACKBONE == "inception_resnet_v2"
    assert distributed.DEFAULT_TIMEOUT_S == defaults.DEFAULT_DIST_TIMEOUT_S > 0
    assert len(set(defaults.PREDICTION_COLUMNS)) == len(defaults.PREDICTION_COLUMNS)
