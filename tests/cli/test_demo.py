"""`napari-allbag demo`: a quick run from the command line, refusals, and the --napari wiring."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest

from napari_allbag.cli.main import main
from napari_allbag.demo import viewer as demo_viewer
from napari_allbag.demo.run import DEMO_FILE, is_finished_demo


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`napari-allbag demo --quick --out DIR --device cpu`: (DIR, exit code, stdout, stderr)."""
    out_dir = tmp_path_factory.mktemp("cli") / "demo"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", "--quick", "--out", str(out_dir), "--device", "cpu"])
    return out_dir, code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture()
def opened(monkeypatch):
    """Record what `--napari` would open instead of starting napari's event loop."""
    calls = []
    monkeypatch.setattr(demo_viewer, "show_demo", lambda *args: calls.append(args))
    return calls


def test_quick_demo_from_the_command_line(cli_run):
    out_dir, code, stdout, stderr = cli_run
    assert code == 0, stderr
    assert is_finished_demo(out_dir)
    summary = json.loads((out_dir / DEMO_FILE).read_text(encoding="utf-8"))
    with open(out_dir / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["field"]["cells"] > 0
    # the report (Table 1) and the closing summary with figures and paths
    assert "weighted avg" in stdout and "ensemble" in stdout
    f1 = summary["validation_weighted_f1"]["ensemble"]
    assert f"weighted F1 of the ensemble {f1:.2f}" in stdout
    assert f"{summary['field']['cells']} cells found, {summary['field']['n_all']} ALL" in stdout
    for name in ("bundle", "report.txt", "curves.png", "results.csv", "overlay.png"):
        assert str(out_dir / name) in stdout
    assert stdout.count("no diagnostic model") >= 2  # said at the start and in the summary


def test_progress_bars_show_short_figures_only(cli_run):
    _, _, _, stderr = cli_run
    assert "stage1-A" in stderr and "classify" in stderr  # tqdm bars go to stderr
    assert "row={" not in stderr and "Validation report" not in stderr


def test_a_non_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep", encoding="utf-8")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not empty" in err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_a_finished_demo_is_not_trained_again(cli_run, capsys):
    out_dir = cli_run[0]
    assert main(["demo", "--quick", "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished demo" in err and "--napari" in err


def test_napari_opens_a_finished_demo_without_training(cli_run, opened, capsys):
    out_dir = cli_run[0]
    before = sorted(p.name for p in out_dir.iterdir())
    assert main(["demo", "--out", str(out_dir), "--napari"]) == 0
    assert opened == [(out_dir / "bundle", out_dir)]
    assert sorted(p.name for p in out_dir.iterdir()) == before
    assert "opening it in napari" in capsys.readouterr().out


def test_napari_with_a_bundle(cli_run, opened):
    bundle = cli_run[0] / "bundle"
    assert main(["demo", "--napari", "--bundle", str(bundle)]) == 0
    assert opened == [(bundle, None)]


def test_bundle_needs_napari_and_a_real_bundle(tmp_path, opened, capsys):
    assert main(["demo", "--bundle", str(tmp_path)]) == 2
    assert "--bundle only goes with --napari" in capsys.readouterr().err
    assert main(["demo", "--napari", "--bundle", str(tmp_path)]) == 2
    assert "bundle.json is missing" in capsys.readouterr().err
    assert opened == []


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for option in ("--out", "--quick", "--napari", "--bundle", "--device"):
        assert option in out
