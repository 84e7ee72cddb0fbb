"""log.csv round trip and the training-curve PNG (Agg, no pyplot)."""

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


def test_curves_render_to_an_rgba_array_of_the_asked_size():
    from napari_allbag.training.curves import render_curves_rgba

    image = render_curves_rgba(_rows()[:3], 320, 200)
    assert image.shape == (200, 320, 4) and image.dtype == np.uint8
    assert image[..., :3].std() > 10  # something was drawn
    assert render_curves_rgba([], 50, 40).shape == (40, 50, 4)


def test_the_kept_epoch_is_the_first_lowest_validation_loss():
    from napari_allbag.training.curves import kept_epoch

    rows = [
        {"stage": "stage1-A", "epoch": 1, "val_loss": 0.9},
        {"stage": "stage1-A", "epoch": 2, "val_loss": 0.4},
        {"stage": "stage1-A", "epoch": 3, "val_loss": float("nan")},
        {"stage": "stage1-A", "epoch": 4, "val_loss": 0.4},
        {"stage": "stage1-A", "epoch": 5, "val_loss": 0.8},
    ]
    assert kept_epoch(rows) == 2
    assert kept_epoch([{"epoch": 1, "val_loss": float("nan")}]) is None


def test_curves_mark_the_kept_epoch():
    from matplotlib.figure import Figure

    from napari_allbag.training.curves import draw_curves

    rows = [
        {
            "stage": "stage1-A",
            "epoch": e,
            "loss": 1 / e,
            "accuracy": 0.5,
            "val_loss": v,
            "val_accuracy": a,
        }
        for e, v, a in ((1, 0.7, 0.6), (2, 0.3, 1.0), (3, 0.9, 0.525))
    ]
    figure = Figure()
    draw_curves(figure, rows)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles and all("kept: epoch 2" in title for title in titles)
    accuracy = figure.axes[1]
    rings = [line for line in accuracy.get_lines() if line.get_label() == "kept epoch"]
    assert len(rings) == 1 and list(rings[0].get_ydata()) == [1.0]


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
