"""The `napari-allbag` dispatcher: version, help for every subcommand, no command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_allbag import __version__
from napari_allbag.cli.main import SUBCOMMANDS, main


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert f"napari-allbag {command}" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "segment" in capsys.readouterr().out


def test_runs_as_a_module():
    done = subprocess.run(
        [sys.executable, "-m", "napari_allbag", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and __version__ in done.stdout


def test_help_loads_no_torch_nor_gui():
    """Every subcommand's `--help` is quick: the parser registers them all without torch or napari."""
    code = (
        "import sys; from napari_allbag.cli.main import build_parser; build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'napari', 'qtpy'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
