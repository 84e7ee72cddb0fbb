"""A whole folder classified as `napari-allbag predict` does, kept so any image can be reopened.

`FolderClassification(bundle, folder, out, options, overlays).run()` is a progress generator: it
finds the folder's images, runs `pipeline.predict_files` over them, writes one results.csv row
per cell through `io.atomic.AtomicCsv` (`<out>.partial` keeps the rows of a cancelled run, see
`close`), then the per-image summary `<out stem>.images.csv`, as `predict` does
(`columns.write_summary`), with `overlays=DIR` each image's cells drawn as `predict --overlays
DIR` draws them (`overlay.OverlayWriter`), and keeps each file's predictions. A NaN or infinite
probability stops the run before its rows are written (`columns.NonFiniteProbability`, the check
`predict` makes). `reopen_image(bundle, file, options)` turns one file of the run back into what
the single-image path shows: the image, its cells (segmented again with the same parameters, so
the same cells in the same order) and the run's predictions for them.
Plain Python: the Classify widget runs both in its worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.inference import columns
from napari_allbag.inference.pipeline import (
    DEFAULT_OPTIONS,
    ImagePredictions,
    PipelineOptions,
    predict_files,
    segmentation_params,
    stream_shown_to,
)
from napari_allbag.inference.predict import FilePredictions, PredictionRun
from napari_allbag.progress import Progress

#: Where a folder's results go unless another file is chosen.
DEFAULT_RESULTS_NAME = "allbag-results.csv"


def default_results_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / DEFAULT_RESULTS_NAME


@dataclass
class FolderRun:
    """A finished folder run: the per-file summaries, each file's predictions, the CSV."""

    run: PredictionRun
    files: list[FilePredictions] = field(default_factory=list)
    csv_path: Path | None = None
    summary_path: Path | None = None  # the per-image summary, `<csv stem>.images.csv`
    overlays_path: Path | None = None  # the folder of overlay PNGs, where asked for
    overlays_written: int = 0

    def file(self, path: str | os.PathLike) -> FilePredictions:
        for item in self.files:
            if item.path == Path(path):
                return item
        raise KeyError(f"{path} is not an image of this run")


@dataclass
class ReopenedImage:
    """One image of a run, as the single-image path shows it."""

    image: np.ndarray  # RGB uint8
    result: ImagePredictions


class FolderClassification:
    """Classify every image under `folder`, writing results.csv rows to `out` as they come,
    and with `overlays` (a folder outside `folder`) each image as `predict --overlays` does."""

    def __init__(
        self,
        bundle: Any,
        folder: str | os.PathLike,
        out: str | os.PathLike,
        options: PipelineOptions = DEFAULT_OPTIONS,
        overlays: str | os.PathLike | None = None,
    ):
        from napari_allbag.inference.overlay import OverlayWriter
        from napari_allbag.io.images import IMAGE_EXTENSIONS, find_images

        self.bundle, self.options = bundle, options
        self.out = Path(out)
        self.summary = columns.summary_path(self.out)
        _check_outputs(bundle, folder, (self.out, self.summary), overlays)
        self.paths = find_images([folder])
        if not self.paths:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        self.overlays = OverlayWriter(overlays) if overlays is not None else None
        self.writer: Any = None
        self.files: list[FilePredictions] = []
        self.finished = False

    def run(self) -> Generator[Progress, None, FolderRun]:
        """Classify the images (yields Progress); commit the CSV; return the `FolderRun`."""
        from napari_allbag.io.atomic import AtomicCsv

        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.writer = AtomicCsv(self.out, columns.RESULT_COLUMNS)
        try:
            stream = stream_shown_to([self.overlays], keep_labels=True) if self.overlays else None
            work = predict_files(self.bundle, self.paths, self.options, self._sink, stream)
            run = yield from work
        except BaseException:
            self.close()
            raise
        self.writer.commit()
        self.finished = True
        columns.write_summary(self.summary, run.files)
        folder_run = FolderRun(run, list(self.files), self.out, self.summary)
        if self.overlays is not None:
            folder_run.overlays_path = self.overlays.out_dir
            folder_run.overlays_written = self.overlays.written
        return folder_run

    def close(self) -> Path | None:
        """After a cancelled or failed run: keep its rows as `<out>.partial` (returned)."""
        if self.writer is None or self.finished:
            return None
        self.finished = True
        return self.writer.abandon()

    def _sink(self, result: FilePredictions) -> None:
        for values in columns.result_rows(result):
            self.writer.write_row(values)
        self.files.append(result)
        if self.overlays is not None:
            self.overlays.write(result)


def _check_outputs(bundle: Any, folder, files: tuple[Path, Path], overlays) -> None:
    """The CSVs are files outside the bundle; an overlays folder lies outside the images'
    folder too (its PNGs would be read as images by the next run of that folder)."""
    from napari_allbag.io.paths import check_output_location

    bundle_path = getattr(bundle, "path", None)
    for target, what in zip(files, ("results CSV", "per-image summary"), strict=True):
        check_output_location(target, [], bundle_path, what=what)
        if target.is_dir():
            raise ValueError(f"{target} is a folder: give a file name for the {what}")
    if overlays is not None:
        what = "overlays folder"
        check_output_location(overlays, [folder], bundle_path, what=what, folder=True)
        if Path(overlays).is_file():
            raise ValueError(f"{overlays} is a file: give a folder for the overlay pictures")


def reopen_image(
    bundle: Any, item: FilePredictions, options: PipelineOptions = DEFAULT_OPTIONS
) -> Generator[Progress, None, ReopenedImage]:
    """Read one file of a run and segment it again (the run kept no label images) with the
    same parameters; pair its cells with the run's predictions for them."""
    from napari_allbag.io.images import read_image
    from napari_allbag.segmentation.brightfield import segment_auto_progress

    if item.error:
        raise ValueError(f"{item.path} was not classified: {item.error}")
    image = read_image(item.path)
    params = segmentation_params(bundle, options)
    segmented = yield from segment_auto_progress(image, params, str(item.path))
    ids = np.asarray(segmented.table.get("cell_id", []))
    run_ids = np.asarray(item.table.get("cell_id", ids))
    if len(ids) != len(item.predictions) or not np.array_equal(ids, run_ids):
        raise ValueError(
            f"{item.path} gives other cells now than in the run (changed on disk?): classify it "
            "again"
        )
    return ReopenedImage(image, ImagePredictions(segmented, item.predictions))
