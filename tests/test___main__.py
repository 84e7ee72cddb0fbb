"""`python -m napari_allbag` is the command line (what torchrun launches), exit status included."""

from __future__ import annotations

import subprocess
import sys

from napari_allbag.cli.main import SUBCOMMANDS


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_allbag", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_subcommand():
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert name in done.stdout, name


def test_an_error_is_the_exit_status():
    done = _run("evaluate", "no_such_bundle")  # DATA_DIR missing: argparse's usage error
    assert done.returncode == 2 and "usage" in done.stderr
