"""Tiled segmentation of a 20,000 x 20,000 TIFF: megapixels per second and peak memory.

Writes a tiled RGB BigTIFF (a dark field of many two-tone cells on a jittered grid) in a
temporary folder, tile by tile so that writing stays in bounded memory, then segments it with
`tiles.segment_tiled` and today's `segment_image` in worker processes: tiles go to the workers,
each worker reads its own tiles from the file, only the kept cells come back. Writing and
segmenting each run in a fresh process, so that their peak RSS (``getrusage`` ru_maxrss of the
process and of its largest child; psutil's sampled sum of parent and workers where installed)
are their own.

    python benchmarks/bench_tiles.py [--size 20000] [--workers 2] [--compression zlib]
        [--tile 2048] [--overlap 256] [--keep-crops] [--dir DIR]

Target (issue 10): at least 20 megapixels/s on 2 cores, in bounded memory (report the peak).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

TIFF_TILE = 512
CELL_SPACING = 250  # one cell per 250 x 250 px: 6,400 cells on 20,000 x 20,000


def cell_plan(size: int, seed: int = 0) -> np.ndarray:
    """Rows (centre_row, centre_col, radius_a, radius_b, angle, shade) on a jittered grid."""
    rng = np.random.default_rng(seed)
    centres = np.arange(CELL_SPACING // 2, size, CELL_SPACING, dtype=np.float64)
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    n = rows.size
    jitter = rng.uniform(-60, 60, (2, n))
    radius_a = rng.uniform(25, 55, n)
    return np.stack(
        [
            rows.ravel() + jitter[0],
            cols.ravel() + jitter[1],
            radius_a,
            radius_a * rng.uniform(0.75, 1.0, n),
            rng.uniform(0, 180, n),
            rng.uniform(0.8, 1.2, n),
        ],
        axis=1,
    )


def draw_band(plan: np.ndarray, top: int, height: int, width: int) -> np.ndarray:
    """Rows top:top+height of the field: black, purple cytoplasm, darker nucleus."""
    band = np.zeros((height, width, 3), np.uint8)
    reach = plan[:, 2].max() + 2
    near = plan[(plan[:, 0] > top - reach) & (plan[:, 0] < top + height + reach)]
    for row, col, radius_a, radius_b, angle, shade in near:
        centre = (round(col), round(row - top))
        for scale, colour in ((1.0, (120, 70, 160)), (0.7, (70, 30, 120))):
            axes = (round(radius_a * scale), round(radius_b * scale))
            tone = tuple(min(255, int(v * shade)) for v in colour)
            cv2.ellipse(band, centre, axes, angle, 0, 360, tone, -1)
    return band


def tiles_of(plan: np.ndarray, size: int):
    """The field's TIFF tiles in raster order, full-size (zero-padded at the far edges)."""
    padded = math.ceil(size / TIFF_TILE) * TIFF_TILE
    for top in range(0, size, TIFF_TILE):
        band = np.zeros((TIFF_TILE, padded, 3), np.uint8)
        height = min(TIFF_TILE, size - top)
        band[:height, :size] = draw_band(plan, top, height, size)
        for left in range(0, padded, TIFF_TILE):
            yield band[:, left : left + TIFF_TILE]


def write_field(path: Path, size: int, compression: str | None) -> dict:
    import tifffile

    start = time.perf_counter()
    plan = cell_plan(size)
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        tiff.write(
            tiles_of(plan, size),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(TIFF_TILE, TIFF_TILE),
            photometric="rgb",
            compression=compression,
        )
    return {
        "seconds": time.perf_counter() - start,
        "cells_drawn": int(len(plan)),
        "file_mb": path.stat().st_size / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


class RssSampler(threading.Thread):
    """Peak of this process's RSS plus its children's, sampled every 0.1 s (psutil)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = float("nan")
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me, peak = psutil.Process(), 0
        while not self._stop_event.wait(0.1):
            try:
                total = me.memory_info().rss
                total += sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            peak = max(peak, total)
            self.peak_mb = peak / 2**20

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_mb


def segment_field(path: Path, args) -> dict:
    from napari_allbag.progress import drive
    from napari_allbag.segmentation import SegmentationParams, segment_image
    from napari_allbag.segmentation.tiles import TileOptions, open_large_image, segment_tiled

    image = open_large_image(path)
    access, shape = image.access, image.shape
    image.close()
    options = TileOptions(args.tile, args.overlap, args.workers, False, args.keep_crops)
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    result = drive(segment_tiled(path, segment_image, SegmentationParams(), options))
    seconds = time.perf_counter() - start
    return {
        "access": access,
        "seconds": seconds,
        "megapixels_per_s": shape[0] * shape[1] / 1e6 / seconds,
        "cells_found": result.n_cells,
        "message": result.message,
        "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "sampled_total_peak_rss_mb": sampler.stop(),
    }


def run_step(step: str, path: Path, argv: list[str]) -> dict:
    """Run one step in a fresh process; its last output line is JSON."""
    command = [sys.executable, __file__, f"--{step}", str(path), *argv]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--overlap", type=int, default=256)
    parser.add_argument("--compression", choices=("none", "zlib"), default="none")
    parser.add_argument("--keep-crops", action="store_true", help="keep every cell's 299 px crop")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the TIFF")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--segment", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    compression = None if args.compression == "none" else args.compression
    if args.write:
        print(json.dumps(write_field(args.write, args.size, compression)))
        return 0
    if args.segment:
        print(json.dumps(segment_field(args.segment, args)))
        return 0
    passed = [f"--{name}={getattr(args, name)}" for name in ("size", "workers", "tile", "overlap")]
    passed += [f"--compression={args.compression}"] + (["--keep-crops"] if args.keep_crops else [])
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "field.tif"
        written = run_step("write", path, passed)
        segmented = run_step("segment", path, passed)
    print(
        f"{args.size} x {args.size} RGB, TIFF tiles {TIFF_TILE} px, compression {args.compression}"
    )
    print(f"write:   {json.dumps(written)}")
    print(f"segment: {json.dumps(segmented)}")
    print(
        f"=> {segmented['megapixels_per_s']:.1f} MP/s with {args.workers} worker(s) "
        f"(target >= 20 on 2 cores); peaks: parent {segmented['parent_peak_rss_mb']:.0f} MB, "
        f"largest worker {segmented['largest_worker_peak_rss_mb']:.0f} MB, sampled total "
        f"{segmented['sampled_total_peak_rss_mb']:.0f} MB (shared machine: other jobs ran too)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
