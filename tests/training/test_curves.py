"""log.csv round trip and the training-curve PNG (Agg, no pyplot), written by rank 0 only."""

from __future__ import annotations

import io

import numpy as np

from napari_allbag.training.config import RunPaths
from napari_allbag.training.curves import (
    LOG_COLUMNS,
    read_log,
    render_curves_png,
    save_curves,
    write_log,
)


def _rows():
    rows = []
    for stage in ("stage1-A", "stage1-B", "stage2"):
        for epoch in (1, 2, 3):
            rows.append(
                {
                    "stage": stage,
                    "epoch": epoch,
                    "loss": 1 / epoch,
                    "accuracy": 0.5 + epoch / 10,
                    "val_loss": 1.2 / epoch,
                    "val_accuracy": 0.4 + epoch / 10,
                    "lr": 1e-3,
                    "seconds": 0.25,
                }
            )
    return rows


def test_log_round_trip(tmp_path):
    path = tmp_path / "log.csv"
    write_log(path, _rows())
    assert path.read_text().splitlines()[0] == ",".join(LOG_COLUMNS)
    back = read_log(path)
    assert [(r["stage"], r["epoch"]) for r in back] == [(r["stage"], r["epoch"]) for r in _rows()]
    assert np.allclose([r["val_loss"] for r in back], [r["val_loss"] for r in _rows()])
    assert read_log(tmp_path / "missing.csv") == []


def test_curves_png_has_a_panel_row_per_stage(tmp_path):
    from matplotlib.image import imread

    data = render_curves_png(_rows(), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes() == data
    image = imread(io.BytesIO(data))
    one_stage = imread(io.BytesIO(render_curves_png(_rows()[:3])))
    assert image.shape[0] > 2.5 * one_stage.shape[0]
    assert image[..., :3].std() > 0.05  # something was drawn
    empty = imread(io.BytesIO(render_curves_png([])))
    assert empty.size > 0


def test_curves_are_drawn_by_the_main_process_only(tmp_path):
    paths = RunPaths(tmp_path)
    history = [
        {
            "stage": "stage1-A",
            "epoch": e,
            "loss": 1 / e,
            "val_loss": 1.2 / e,
            "accuracy": 0.5,
            "val_accuracy": 0.5,
            "lr": 1e-3,
        }
        for e in (1, 2, 3)
    ]
    save_curves(False, paths.curves, history)
    assert not paths.curves.exists()
    save_curves(True, paths.curves, [])
    assert not paths.curves.exists()
    save_curves(True, paths.curves, history)
    assert paths.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
