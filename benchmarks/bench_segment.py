"""Segmentation speed: cells per second on the real C-NMC cells, ours against the reference.

Each cell is read from its BMP, segmented, cropped and resized to 299x299 (the whole per-file job
of `napari-allbag segment` and of the training crop cache). Measured on one core (in this
process, ``cv2.setNumThreads(1)``) and on all cores (``iter_segment_files`` worker processes,
the pool start included), for the OpenCV implementation and the scikit-image reference. Then one
very large generated field is segmented in a fresh process to report its time and peak memory.

    python benchmarks/bench_segment.py [--data ../shared/data/cnmc_sample] [--rounds 20]
    python benchmarks/bench_segment.py --scaling [--cells 1860] [--scaling-rounds 3]
    python benchmarks/bench_segment.py --png
    python benchmarks/bench_segment.py --auto-cost [--rounds 20]

Targets (issue 2): at least 10x the reference and at least 500 cells/s on one core.
`--scaling` (issue 14, target 1): the real cells copied into a temporary folder until there are
`--cells` files, then 1 and N workers interleaved (`--scaling-rounds` each, median): the stream
that `predict` and the crop cache use (`iter_segment_files`, crops back in this process) and
`segment` in this process (`segment_to_folder`: PNG crops and cells.csv written), pool start-up
included (the pool's forkserver starts once per process: in the first N-worker round), and the
`napari-allbag segment` command in a new process each run (Python's start and all imports
included, wall time only); the ratio N-worker / 1-worker rate is the figure (target >= 0.8 x N),
and the CPU time of this process and of its workers per cell shows the overhead on a shared
machine. `--png`: CPU time and size per crop of PNG encoders and settings (all lossless).
`--auto-cost` (issue 10: "no loss of speed" on the C-NMC cells): CPU time per cell of
`segment_auto` with background "dark" and "auto" on the decoded cells, interleaved round by
round (median of `--rounds`), and of `detect_background` alone; every cell must come out dark.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np

# the scikit-image reference segmentation is a test oracle: tests/segmentation/reference.py,
# imported where it runs, so worker processes (which import this script) start without skimage
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from napari_allbag.io import ordered_pool, png
from napari_allbag.io.allocator import tune_allocator
from napari_allbag.io.images import find_images, read_image
from napari_allbag.io.ordered_pool import ordered_map
from napari_allbag.segmentation.dark import (
    FileSegmentation,
    SegmentationParams,
    default_workers,
    iter_segment_files,
    segment_file,
)
from napari_allbag.segmentation.to_folder import segment_to_folder

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnmc_sample"


def reference_task(path: Path, params: SegmentationParams) -> FileSegmentation:
    """The reference's whole per-file job, for worker processes."""
    from tests.segmentation.reference import segment_image_reference

    return FileSegmentation(path, segment_image_reference(read_image(path), params, str(path)))


def time_one_core(paths, segment) -> tuple[int, float, float]:
    """(cells, seconds, start-up seconds) segmenting `paths` one after the other here."""
    start = time.perf_counter()
    cells = sum(segment(path).n_cells for path in paths)
    return cells, time.perf_counter() - start, 0.0


def time_all_cores(outcomes) -> tuple[int, float, float]:
    """(cells, seconds, seconds until the first result: the worker processes' start)."""
    start = time.perf_counter()
    cells, first = 0, None
    for outcome in outcomes:
        if outcome.error:
            raise RuntimeError(f"{outcome.path}: {outcome.error}")
        cells += outcome.result.n_cells
        first = first or time.perf_counter() - start
    return cells, time.perf_counter() - start, first


def large_image_run(side: int) -> str:
    """Segment a generated side x side field in a fresh process; its time and peak memory."""
    script = textwrap.dedent(
        f"""
        import resource, time
        import cv2, numpy as np
        from napari_allbag.segmentation.dark import SegmentationParams, segment_image
        side = {side}
        rng = np.random.default_rng(0)
        image = np.zeros((side, side, 3), np.uint8)
        for row in range(150, side - 150, 400):
            for col in range(150, side - 150, 400):
                axes = (int(rng.integers(60, 140)), int(rng.integers(60, 140)))
                colour = tuple(int(v) for v in rng.integers(60, 255, 3))
                cv2.ellipse(image, (col, row), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        result = segment_image(image, SegmentationParams())
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        crops = result.crops.nbytes
        print(f"{{side}}x{{side}} RGB ({{image.nbytes / 1e6:.0f}} MB), {{result.n_cells}} cells: "
              f"{{seconds:.2f}} s; peak memory beyond the image {{(peak - base) / 1e6:.0f}} MB = "
              f"labels {{result.labels.nbytes / 1e6:.0f}} MB + crops {{crops / 1e6:.0f}} MB + "
              f"{{(peak - base - result.labels.nbytes - crops) / 1e6:.0f}} MB working "
              f"({{(peak - base - result.labels.nbytes - crops) / image.nbytes:.2f}} x image)")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()


def copies(paths: list[Path], total: int, folder: Path) -> list[Path]:
    """`total` files in `folder`: the real cells copied round after round under new names."""
    made = []
    for index in range(total):
        source = paths[index % len(paths)]
        made.append(folder / f"r{index // len(paths)}_{source.name}")
        shutil.copyfile(source, made[-1])
    return made


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process, and of its worker processes so far.

    Workers forked by the pool's forkserver are its children, not ours: their time is counted
    in the forkserver's children times once it has reaped them (psutil; spawned workers in
    RUSAGE_CHILDREN).
    """
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime + _living_children()


def _living_children() -> float:
    """CPU seconds of our living children (the forkserver) and the children they reaped."""
    import psutil

    total = 0.0
    for child in psutil.Process().children():
        try:
            for _ in range(100):  # the forkserver reaps exited workers on SIGCHLD: wait for it
                if not child.children():
                    break
                time.sleep(0.01)
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def timed(run) -> tuple[float, float, float]:
    """(cells/s, CPU ms per cell here, CPU ms per cell in workers) of `run()` -> cells."""
    cpu_before, start = _cpu_seconds(), time.perf_counter()
    cells = run()
    seconds, cpu_after = time.perf_counter() - start, _cpu_seconds()
    own, workers = (
        1e3 * (after - before) / cells for after, before in zip(cpu_after, cpu_before, strict=True)
    )
    return cells / seconds, own, workers


def stream_cells(paths, params, workers) -> int:
    stream = iter_segment_files(paths, params, workers, keep_labels=False)
    return sum(outcome.result.n_cells for outcome in stream)


def folder_cells(paths, params, workers, out: Path) -> int:
    shutil.rmtree(out, ignore_errors=True)
    work = segment_to_folder(paths, out, params, workers)
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value["cells"]


def cli_cells(folder: Path, workers: int, out: Path) -> tuple[float, float, float]:
    """(cells/s, nan, nan) of ``napari-allbag segment`` run in a new process: Python's start,
    the imports and the worker pool's start all included, as a user sees it."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "napari_allbag", "segment", str(folder), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(
        [*command, "--workers", str(workers), "--quiet"], check=True, capture_output=True
    )
    seconds = time.perf_counter() - start
    with open(out / "cells.csv") as table:
        cells = sum(1 for _ in table) - 1
    return cells / seconds, math.nan, math.nan


def pool_startup(paths, params, workers: int) -> None:
    """Wall and CPU seconds of a pool segmenting 8 files: spawned workers (as before
    2026-12-02), the forkserver's first pool in this process (it starts and imports the
    segmentation once), and a later pool (workers forked from the running server)."""

    def spawned():
        return multiprocessing.get_context("spawn")

    forked = ordered_pool._context
    print(f"\n| pool start, {workers} workers, 8 files | wall s | CPU s here | CPU s workers |")
    print("| --- | ---: | ---: | ---: |")
    for name, make in (("spawn", spawned), ("forkserver, first pool", forked), ("later", forked)):
        ordered_pool._context = make
        try:
            cpu, start = _cpu_seconds(), time.perf_counter()
            stream_cells(paths[:8], params, workers)
            wall, after = time.perf_counter() - start, _cpu_seconds()
        finally:
            ordered_pool._context = forked
        print(f"| {name} | {wall:.2f} | {after[0] - cpu[0]:.2f} | {after[1] - cpu[1]:.2f} |")


def scaling(args, params) -> None:
    """1 and N workers interleaved on `--cells` copies of the real cells (see the docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as temporary:
        folder = Path(temporary)
        (folder / "in").mkdir()
        paths = copies(find_images([args.data]), args.cells, folder / "in")
        segment_file(paths[0], params)  # this process's imports, before the 1-worker rounds
        pool_startup(paths, params, args.workers)
        jobs = {
            "stream (predict, crop cache)": lambda w: timed(lambda: stream_cells(paths, params, w)),
            "segment, PNG crops written": lambda w: timed(
                lambda: folder_cells(paths, params, w, folder / "out")
            ),
            "`napari-allbag segment` command (new process)": lambda w: cli_cells(
                folder / "in", w, folder / "out"
            ),
        }
        found = {(name, w): [] for name in jobs for w in (1, args.workers)}
        for round_index in range(args.scaling_rounds):
            for name, job in jobs.items():
                for workers in (1, args.workers) if round_index % 2 == 0 else (args.workers, 1):
                    found[name, workers].append(job(workers))
                    print(
                        f"  round {round_index + 1} {name} workers {workers}: "
                        f"{found[name, workers][-1][0]:.0f} cells/s",
                        flush=True,
                    )
    print(
        f"\n| job | workers | cells/s (median of {args.scaling_rounds}) | CPU ms/cell here | "
        "CPU ms/cell in workers | vs 1 worker |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in jobs:
        base = statistics.median(r[0] for r in found[name, 1])
        for workers in (1, args.workers):
            runs = found[name, workers]
            rate = statistics.median(r[0] for r in runs)
            own, pool = (_ms(statistics.median(r[i] for r in runs)) for i in (1, 2))
            print(f"| {name} | {workers} | {rate:.0f} | {own} | {pool} | {rate / base:.2f}x |")
    print(
        f"target: {args.workers} workers >= {0.8 * args.workers:.1f}x one worker; segment end to "
        "end >= 300 cells/s on 2 cores"
    )


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def png_settings(args, params) -> None:
    """CPU time and size per crop of PNG encoders and settings on the real crops (all lossless)."""
    crops = [c for p in find_images([args.data]) for c in segment_file(p, params).crops]
    level = [cv2.IMWRITE_PNG_COMPRESSION]
    up_rle = [
        cv2.IMWRITE_PNG_FILTER,
        cv2.IMWRITE_PNG_FILTER_UP,
        cv2.IMWRITE_PNG_STRATEGY,
        cv2.IMWRITE_PNG_STRATEGY_RLE,
    ]
    encoders = {
        "OpenCV default (level 1, adaptive filters)": _opencv([]),
        "OpenCV level 0 (stored)": _opencv([*level, 0]),
        "OpenCV level 3": _opencv([*level, 3]),
        "OpenCV level 6": _opencv([*level, 6]),
        "OpenCV level 1, up filter, RLE (segment until 2026-12-02)": _opencv([*level, 1, *up_rle]),
        "io.png, up filter, zlib level 1 RLE (without isal)": lambda c: _png_with(c, False),
        f"io.png, up filter, ISA-L level {png.ISAL_LEVEL} (segment's)": png.encode_png,
    }
    print("\n| PNG encoder and setting | CPU ms per crop (best of 3) | KB per crop |")
    print("| --- | ---: | ---: |")
    for name, encode in encoders.items():
        best = min(_encode_seconds(crops, encode) for _ in range(3))
        size = sum(len(encode(c)) for c in crops) / len(crops)
        print(f"| {name} | {1e3 * best / len(crops):.2f} | {size / 1e3:.1f} |")


def _opencv(setting):
    """An RGB crop -> PNG bytes encoder with OpenCV and `setting`."""
    return lambda crop: cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), setting)[1]


def _png_with(crop, use_isal: bool) -> bytes:
    saved = png.isal_zlib
    png.isal_zlib = saved if use_isal else None
    try:
        return png.encode_png(crop)
    finally:
        png.isal_zlib = saved


def _encode_seconds(crops, encode) -> float:
    start = time.process_time()
    for crop in crops:
        encoded = encode(crop)
    decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
    assert (cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) == crops[-1]).all()  # lossless
    return time.process_time() - start


def auto_cost(args, paths) -> None:
    """CPU ms per cell of the dark path with background "dark" vs "auto", interleaved."""
    from napari_allbag.segmentation.brightfield import detect_background, segment_auto

    images = [read_image(path) for path in paths]
    modes = {detect_background(image).mode for image in images}
    print(f"auto picks {sorted(modes)} for the {len(images)} cells")
    runs: dict[str, list[float]] = {"dark": [], "auto": [], "detect_background alone": []}
    settings = {"dark": SegmentationParams(background="dark"), "auto": SegmentationParams()}
    jobs = {name: (lambda im, p=p: segment_auto(im, p)) for name, p in settings.items()}
    jobs["detect_background alone"] = detect_background
    for round_index in range(args.rounds):
        order = list(jobs) if round_index % 2 == 0 else list(jobs)[::-1]
        for name in order:
            start = time.process_time()
            for image in images:
                jobs[name](image)
            runs[name].append(1e3 * (time.process_time() - start) / len(images))
    print(f"\n| background | CPU ms per cell (median of {args.rounds} rounds, min-max) |")
    print("| --- | ---: |")
    for name, values in runs.items():
        print(f"| {name} | {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f}) |")
    extra = statistics.median(a - d for a, d in zip(runs["auto"], runs["dark"], strict=True))
    print(f"auto - dark, median of the per-round differences: {extra:+.3f} ms per cell")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of C-NMC cells")
    parser.add_argument("--rounds", type=int, default=20, help="passes over the cells (ours)")
    parser.add_argument("--reference-rounds", type=int, default=2, help="passes (reference)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="all cores")
    parser.add_argument(
        "--large-side", type=int, default=12000, help="side of the large-image run (0: skip it)"
    )
    parser.add_argument("--scaling", action="store_true", help="1 vs N workers only")
    parser.add_argument("--cells", type=int, default=1860, help="files for --scaling")
    parser.add_argument("--scaling-rounds", type=int, default=3, help="rounds for --scaling")
    parser.add_argument("--png", action="store_true", help="PNG settings only")
    parser.add_argument("--auto-cost", action="store_true", help="dark vs auto, CPU per cell")
    args = parser.parse_args()

    paths = find_images([args.data])
    if not paths:
        print(f"no images in {args.data}", file=sys.stderr)
        return 2
    params = SegmentationParams()
    workers = max(1, args.workers)
    print(
        f"machine: {cpu_name()}, {default_workers()} core(s) usable; python "
        f"{platform.python_version()}, OpenCV {cv2.__version__}"
    )
    print(f"data: {len(paths)} cells from {args.data}; crops {params.crop_size}x{params.crop_size}")
    cv2.setNumThreads(1)
    tuned = tune_allocator()  # as the command line does (NAPARI_ALLBAG_MALLOC=default: glibc's own)
    print(f"allocator: {'fixed thresholds (io.allocator)' if tuned else 'the C library default'}")
    if args.auto_cost:
        auto_cost(args, paths)
        return 0
    if args.scaling or args.png:
        (scaling if args.scaling else png_settings)(args, params)
        return 0
    return compare_with_reference(args, paths, params, workers)


def compare_with_reference(args, paths, params, workers) -> int:
    """Ours against the scikit-image reference on one and all cores, and the large image."""
    import skimage
    from tests.segmentation.reference import segment_image_reference

    print(f"scikit-image {skimage.__version__}")
    for path in paths[:3]:  # warm the file cache and imports
        segment_file(path, params)
        segment_image_reference(read_image(path), params)
    ours_paths = paths * args.rounds
    reference_paths = paths * args.reference_rounds
    rows = [
        ("ours (OpenCV)", 1, *time_one_core(ours_paths, lambda p: segment_file(p, params))),
        (
            "reference (scikit-image)",
            1,
            *time_one_core(
                reference_paths, lambda p: segment_image_reference(read_image(p), params)
            ),
        ),
    ]
    cv2.setNumThreads(0)
    if workers > 1:
        rows.append(
            (
                "ours (OpenCV)",
                workers,
                *time_all_cores(iter_segment_files(ours_paths, params, workers, keep_labels=False)),
            )
        )
        rows.append(
            (
                "reference (scikit-image)",
                workers,
                *time_all_cores(ordered_map(reference_task, reference_paths, (params,), workers)),
            )
        )

    reference_rate = {
        cores: cells / seconds
        for name, cores, cells, seconds, _ in rows
        if name.startswith("reference")
    }
    print()
    print(
        "| implementation | cores | cells | seconds | of which start-up | cells/s | vs reference |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, cores, cells, seconds, startup in rows:
        rate = cells / seconds
        print(
            f"| {name} | {cores} | {cells} | {seconds:.2f} | {startup:.2f} | {rate:.0f} | "
            f"{rate / reference_rate[cores]:.1f}x |"
        )
    ours_one_core = rows[0][2] / rows[0][3]
    print()
    print(
        f"targets: >= 500 cells/s on one core: {ours_one_core:.0f} "
        f"({'met' if ours_one_core >= 500 else 'NOT met'}); >= 10x the reference: "
        f"{ours_one_core / reference_rate[1]:.1f}x "
        f"({'met' if ours_one_core >= 10 * reference_rate[1] else 'NOT met'})"
    )
    if args.large_side > 0:
        print()
        print("large image:", large_image_run(args.large_side))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
