"""inference.predict: the streamed file pipeline (segmentation in workers, batches, the sink)."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from napari_allbag.data.synthetic import make_field
from napari_allbag.inference.pipeline import PipelineOptions, predict_files
from napari_allbag.inference.predict import table_columns
from napari_allbag.progress import drive
from napari_allbag.segmentation.dark import FileSegmentation, SegmentationParams, segment_image
from tests.model_factory import direct_probs, random_crops


class _FakeResult:
    def __init__(self, crops, source):
        n = len(crops)
        self.crops = crops
        self.table = {"cell_id": np.arange(1, n + 1), "source": np.full(n, source, object)}
        self.message = "" if n else "no cell found"


def _fake_stream(files, closed):
    """A stand-in for iter_segment_files: {name: crops or error string}, in order."""

    def stream(paths, params, workers):
        try:
            for path in paths:
                value = files[path.name]
                if isinstance(value, str):
                    yield FileSegmentation(path, None, value)
                else:
                    yield FileSegmentation(path, _FakeResult(value, str(path)), None)
        finally:
            closed.append(True)

    return stream


def test_predict_files_streams_files_in_order_to_the_sink(bundle):
    files = {f"img{i:02d}.png": random_crops(i % 4, seed=i) for i in range(12)}
    files["img05.png"] = "not an image"
    paths = [Path(name) for name in files]
    received = []
    closed = []
    run = drive(
        predict_files(
            bundle,
            paths,
            PipelineOptions(batch_size=3),
            sink=received.append,
            segment_stream=_fake_stream(files, closed),
        )
    )
    assert [r.path for r in received] == paths
    assert [s.path for s in run.files] == paths
    for result in received:
        value = files[result.path.name]
        if isinstance(value, str):
            assert result.error == "not an image" and len(result.predictions) == 0
            continue
        assert len(result.predictions) == len(value) == len(result.table["cell_id"])
        if len(value):
            assert np.allclose(result.predictions.probs, direct_probs(bundle, value), atol=1e-5)
    assert run.cells == sum(len(v) for v in files.values() if not isinstance(v, str))
    assert [e.path for e in run.errors] == [Path("img05.png")]
    assert run.n_all == sum(r.predictions.n_all for r in received)
    assert closed == [True]


def test_predict_files_stops_its_feeder_when_cancelled(bundle):
    files = {f"img{i:03d}.png": random_crops(3, seed=i) for i in range(200)}
    closed = []
    work = predict_files(
        bundle,
        [Path(n) for n in files],
        PipelineOptions(batch_size=2),
        segment_stream=_fake_stream(files, closed),
    )
    next(work)
    next(work)
    work.close()  # what napari's worker.quit() does at the next yield
    assert closed == [True]
    assert not any(t.name == "napari-allbag-predict-feeder" for t in threading.enumerate())


def test_predict_files_segments_real_images(bundle, tmp_path):
    paths = []
    for seed in range(2):
        image, _ = make_field(seed=seed, n_cells=4, shape=(384, 384))
        path = tmp_path / f"field{seed}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((64, 64, 3), np.uint8))
    paths.append(black)
    received = []
    run = drive(predict_files(bundle, paths, PipelineOptions(workers=1), sink=received.append))
    params = SegmentationParams.from_dict(bundle.meta["segmentation"])
    expected = segment_image(cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB), params)
    assert len(received[0].predictions) == expected.n_cells > 0
    assert np.allclose(
        received[0].predictions.probs, direct_probs(bundle, expected.crops), atol=1e-5
    )
    assert np.allclose(received[0].table["centroid_row"], expected.table["centroid_row"])
    assert (
        run.files[2].cells == 0 and run.files[2].error is None and "no cell" in run.files[2].message
    )
    assert run.cells == sum(len(r.predictions) for r in received)


def test_table_columns_accepts_the_usual_table_forms():
    as_dict = {"a": np.arange(2), "b": np.array(["x", "y"])}
    assert table_columns(as_dict) == as_dict
    records = table_columns([{"a": 0, "b": "x"}, {"a": 1, "b": "y"}])
    assert records == {"a": [0, 1], "b": ["x", "y"]}
    assert table_columns(None) == {}
