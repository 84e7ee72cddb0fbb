"""Tiled segmentation of a 20,000 x 20,000 TIFF: megapixels per second and peak memory.

Writes a tiled RGB BigTIFF in a temporary folder, tile by tile so that writing stays in bounded
memory, then segments it with `tiles.segment_large` (background auto, decided once from the whole
image) in worker processes: tiles go to the workers, each worker reads and decodes its own tiles
from the file, only the kept cells come back. Writing, reading and segmenting each run in a fresh
process, so that their peak RSS (``getrusage`` ru_maxrss of the process; psutil's samples of
each worker and of the sum of parent and workers, where psutil is installed) are their own; CPU
seconds of the workers are psutil's too (forkserver workers are not this process's children).

What the image holds (`--content`), which decides what zlib decoding costs:

* ``fields`` (default): real bright-field smear fields of ``../shared/data/brightfield_sample``
  (the human ones; JPEG photographs, with their noise) laid side by side in 1,024 px blocks
  (centre-cropped, or mirrored out to the block where smaller), as many copies as the image needs;
  zlib keeps about 60 % of their bytes;
* ``generated``: `data.synthetic_brightfield` smear fields (sensor noise included) in blocks;
* ``discs``: the first version's dark field, two-tone cells on black on a jittered grid (mostly
  flat black: 20k x 20k compresses to 4 MB, which flatters zlib; kept for comparison).

The read step decodes every window the segmentation reads, in one process, and reports its CPU
time: the share of the work that is reading and decoding the TIFF.

    python benchmarks/bench_tiles.py [--size 20000] [--workers 2] [--compression zlib]
        [--content fields|generated|discs] [--tile 2048] [--overlap 256] [--keep-crops] [--dir DIR]
        [--check-count]

`--check-count` segments each block of a fields or generated mosaic alone too, with its own
levels, and prints the sum: the tiled run, with levels measured once on windows of the whole
image, should find about as many (cells cut at the seams between blocks differ).

Target (issue 10): at least 20 megapixels/s on 2 cores, in bounded memory (report the peak).
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
BLOCK = 1024  # side of one field copy in the fields / generated mosaics
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield_sample"


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


def sample_dir() -> Path:
    """The real bright-field sample beside the repository (or under $ALLBAG_SHARED_DATA)."""
    if not SAMPLE.is_dir() and "ALLBAG_SHARED_DATA" in os.environ:
        return Path(os.environ["ALLBAG_SHARED_DATA"]) / "brightfield_sample"
    return SAMPLE


def to_block(image: np.ndarray) -> np.ndarray:
    """A BLOCK x BLOCK piece of `image`: its centre, mirrored out to the block where smaller."""
    pads = [max(0, BLOCK - side) for side in image.shape[:2]]
    if any(pads):
        image = np.pad(image, [(p // 2, p - p // 2) for p in pads] + [(0, 0)], mode="symmetric")
    top, left = ((side - BLOCK) // 2 for side in image.shape[:2])
    return np.ascontiguousarray(image[top : top + BLOCK, left : left + BLOCK])


def mosaic_blocks(content: str) -> list[np.ndarray]:
    """The field blocks a mosaic repeats: real human fields, or generated ones."""
    if content == "fields":
        from napari_allbag.io.images import read_image

        paths = sorted((sample_dir() / "fields").glob("*.jpg"))
        paths = [p for p in paths if not p.name.startswith("pig_")]  # one species, one scale
        if not paths:
            raise SystemExit(f"no fields in {sample_dir()}: use --content generated")
        return [to_block(read_image(path)) for path in paths]
    from napari_allbag.data.synthetic_brightfield import make_brightfield_field

    return [to_block(make_brightfield_field(seed)[0]) for seed in range(6)]


def band_painter(content: str, size: int):
    """band(top, height) -> rows top:top+height of the image, HxWx3 uint8."""
    if content == "discs":
        plan = cell_plan(size)
        return lambda top, height: draw_band(plan, top, height, size), len(plan)
    blocks = mosaic_blocks(content)
    across = math.ceil(size / BLOCK)

    def band(top: int, height: int) -> np.ndarray:
        out = np.empty((height, across * BLOCK, 3), np.uint8)
        for row in range(top, top + height):
            block_row, inner = divmod(row, BLOCK)
            for col in range(across):
                block = blocks[block_index(block_row, col, len(blocks))]
                out[row - top, col * BLOCK : (col + 1) * BLOCK] = block[inner]
        return out[:, :size]

    return band, 0


def block_index(block_row: int, block_col: int, n_blocks: int) -> int:
    """Which of the mosaic's field blocks lies at (block_row, block_col)."""
    return (block_row * 7 + block_col * 3) % n_blocks


def cells_of_blocks_alone(size: int, content: str) -> int:
    """White cells the mosaic holds by the segmentation of each of its blocks alone (each with
    its own levels; the far row and column cut as in the image): what the tiled run should find,
    but for cells cut at the seams between blocks."""
    from napari_allbag.segmentation import SegmentationParams
    from napari_allbag.segmentation.brightfield import segment_brightfield

    blocks, across = mosaic_blocks(content), math.ceil(size / BLOCK)
    counts: dict[tuple[int, int, int], int] = {}
    total = 0
    for block_row in range(across):
        for block_col in range(across):
            index = block_index(block_row, block_col, len(blocks))
            height, width = (
                min(BLOCK, size - block_row * BLOCK),
                min(BLOCK, size - block_col * BLOCK),
            )
            key = (index, height, width)
            if key not in counts:
                piece = np.ascontiguousarray(blocks[index][:height, :width])
                counts[key] = segment_brightfield(piece, SegmentationParams()).n_cells
            total += counts[key]
    return total


def tiles_of(band, size: int):
    """The image's TIFF tiles in raster order, full-size (zero-padded at the far edges)."""
    padded = math.ceil(size / TIFF_TILE) * TIFF_TILE
    for top in range(0, size, TIFF_TILE):
        rows = np.zeros((TIFF_TILE, padded, 3), np.uint8)
        height = min(TIFF_TILE, size - top)
        rows[:height, :size] = band(top, height)
        for left in range(0, padded, TIFF_TILE):
            yield rows[:, left : left + TIFF_TILE]


def write_field(path: Path, size: int, compression: str | None, content: str) -> dict:
    import tifffile

    start = time.perf_counter()
    band, cells_drawn = band_painter(content, size)
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        tiff.write(
            tiles_of(band, size),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(TIFF_TILE, TIFF_TILE),
            photometric="rgb",
            compression=compression,
            maxworkers=2,
        )
    return {
        "seconds": time.perf_counter() - start,
        "cells_drawn": cells_drawn,
        "file_mb": path.stat().st_size / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


class Sampler(threading.Thread):
    """Every 0.1 s (psutil): this process's RSS plus its descendants' (worker processes, and a
    forkserver's workers, which are not this process's children), each descendant's peak RSS
    and its CPU seconds so far (the last seen counts: up to 0.1 s per process is missed)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_mb = float("nan")
        self.process_peak_mb: dict[int, float] = {}
        self.process_cpu_s: dict[int, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me, peak = psutil.Process(), 0
        while not self._stop_event.wait(0.1):
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    rss, cpu = child.memory_info().rss, child.cpu_times()
                except psutil.Error:
                    continue
                total += rss
                pid = child.pid
                self.process_peak_mb[pid] = max(self.process_peak_mb.get(pid, 0), rss / 2**20)
                self.process_cpu_s[pid] = cpu.user + cpu.system
            peak = max(peak, total)
            self.peak_mb = peak / 2**20

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_mb


def segment_field(path: Path, args) -> dict:
    from napari_allbag.progress import drive
    from napari_allbag.segmentation import SegmentationParams
    from napari_allbag.segmentation.tiles import TileOptions, open_large_image, segment_large

    image = open_large_image(path)
    access, shape = image.access, image.shape
    image.close()
    options = TileOptions(args.tile, args.overlap, args.workers, False, args.keep_crops)
    sampler = Sampler()
    sampler.start()
    start, cpu_before = time.perf_counter(), time.process_time()
    result = drive(segment_large(path, SegmentationParams(), options))
    seconds, own = time.perf_counter() - start, time.process_time() - cpu_before
    total_peak = sampler.stop()
    return {
        "access": access,
        "mode": result.mode,
        "seconds": seconds,
        "megapixels_per_s": shape[0] * shape[1] / 1e6 / seconds,
        "cpu_s_parent": own,
        "cpu_s_workers": sum(sampler.process_cpu_s.values()),
        "cells_found": result.n_cells,
        "message": result.message,
        "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "largest_worker_peak_rss_mb": max(sampler.process_peak_mb.values(), default=0.0),
        "sampled_total_peak_rss_mb": total_peak,
    }


def read_windows(path: Path, args) -> dict:
    """Decode every window the segmentation reads, in this process: the reading's CPU share."""
    from napari_allbag.segmentation.tiles import open_large_image, plan_tiles, read_window

    image = open_large_image(path)
    tiles = plan_tiles(image.shape, args.tile, args.overlap)
    start = time.process_time()
    for tile in tiles:
        read_window(image.array, tile.window)
    seconds = time.process_time() - start
    image.close()
    return {
        "windows": len(tiles),
        "cpu_s": seconds,
        "cpu_s_per_megapixel_of_image": seconds / (image.shape[0] * image.shape[1] / 1e6),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
    parser.add_argument(
        "--compression",
        nargs="+",
        choices=("none", "zlib"),
        default=["none"],
        help="one run per compression named",
    )
    parser.add_argument("--content", choices=("fields", "generated", "discs"), default="fields")
    parser.add_argument("--keep-crops", action="store_true", help="keep every cell's 299 px crop")
    parser.add_argument(
        "--check-count",
        action="store_true",
        help="also segment each mosaic block alone and print the cells they hold (fields, generated)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="keep the TIFF there (reused when present)"
    )
    for step in ("write", "read", "segment"):
        parser.add_argument(f"--{step}", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    compression = None if args.compression[0] == "none" else args.compression[0]
    steps = {
        "write": lambda path: write_field(path, args.size, compression, args.content),
        "read": lambda path: read_windows(path, args),
        "segment": lambda path: segment_field(path, args),
    }
    for step, run in steps.items():
        if getattr(args, step):
            print(json.dumps(run(getattr(args, step))))
            return 0
    for name in args.compression:
        run_one(args, name)
    return 0


def run_one(args, compression: str) -> None:
    """Write, read and segment one TIFF, each step in a fresh process; print the figures."""
    passed = [f"--{name}={getattr(args, name)}" for name in ("size", "workers", "tile", "overlap")]
    passed += [f"--compression={compression}", f"--content={args.content}"]
    passed += ["--keep-crops"] if args.keep_crops else []
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "field.tif"
        if args.dir is not None:  # kept there, and reused by the next run with the same image
            path = args.dir / f"bench-{args.content}-{args.size}-{compression}.tif"
        figures = {"write": {"reused": str(path)}} if path.exists() else {}
        for step in ("write", "read", "segment"):
            if step not in figures:
                figures[step] = run_step(step, path, passed)
        file_mb = path.stat().st_size / 2**20
    segmented, read = figures["segment"], figures["read"]
    print(
        f"{args.size} x {args.size} RGB, content {args.content}, TIFF tiles {TIFF_TILE} px, "
        f"compression {compression}, file {file_mb:.0f} MB"
    )
    for step, values in figures.items():
        print(f"{step + ':':9}{json.dumps(values)}")
    cpu = segmented["cpu_s_parent"] + segmented["cpu_s_workers"]
    print(
        f"=> {segmented['megapixels_per_s']:.1f} MP/s with {args.workers} worker(s) "
        f"(target >= 20 on 2 cores), mode {segmented['mode']}, {segmented['cells_found']} cells; "
        f"CPU {cpu:.0f} s ({read['cpu_s']:.0f} s of it reading + decoding, 1 process); "
        f"peaks: parent {segmented['parent_peak_rss_mb']:.0f} MB, largest worker "
        f"{segmented['largest_worker_peak_rss_mb']:.0f} MB, sampled total "
        f"{segmented['sampled_total_peak_rss_mb']:.0f} MB; load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}",
        flush=True,
    )
    if args.check_count and args.content != "discs":
        alone = cells_of_blocks_alone(args.size, args.content)
        print(f"=> each block alone: {alone} cells; tiled run: {segmented['cells_found']}")


if __name__ == "__main__":
    raise SystemExit(main())
