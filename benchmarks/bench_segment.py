"""Segmentation speed: cells per second on the real C-NMC cells, ours against the reference.

Each cell is read from its BMP, segmented, cropped and resized to 299x299 (the whole per-file job
of `napari-allbag segment` and of the training crop cache). Measured on one core (in this
process, ``cv2.setNumThreads(1)``) and on all cores (``iter_segment_files`` worker processes,
the pool start included), for the OpenCV implementation and the scikit-image reference. Then one
very large generated field is segmented in a fresh process to report its time and peak memory.

    python benchmarks/bench_segment.py [--data ../shared/data/cnmc_sample] [--rounds 20]

Targets (issue 2): at least 10x the reference and at least 500 cells/s on one core.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import skimage

# the scikit-image reference segmentation is a test oracle: tests/segmentation/reference.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.segmentation.reference import segment_image_reference  # noqa: E402

from napari_allbag.io.images import find_images, read_image
from napari_allbag.io.ordered_pool import ordered_map
from napari_allbag.segmentation.dark import (
    FileSegmentation,
    SegmentationParams,
    default_workers,
    iter_segment_files,
    segment_file,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cnmc_sample"


def reference_task(path: Path, params: SegmentationParams) -> FileSegmentation:
    """The reference's whole per-file job, for worker processes."""
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
    args = parser.parse_args()

    paths = find_images([args.data])
    if not paths:
        print(f"no images in {args.data}", file=sys.stderr)
        return 2
    params = SegmentationParams()
    workers = max(1, args.workers)
    print(
        f"machine: {cpu_name()}, {default_workers()} core(s) usable; python "
        f"{platform.python_version()}, OpenCV {cv2.__version__}, scikit-image "
        f"{skimage.__version__}"
    )
    print(f"data: {len(paths)} cells from {args.data}; crops {params.crop_size}x{params.crop_size}")

    cv2.setNumThreads(1)
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
