"""Cost of test-time augmentation (8 dihedral views) against one ensemble pass, on the CPU.

    python benchmarks/bench_tta.py                 # resnet10t at 64 and 128 px
    python benchmarks/bench_tta.py --clock cpu     # CPU time, 1 thread: steadier on a busy machine

Both classify the same cells with the same images-per-call limit: one pass sends them through
`Ensemble` once; TTA sends the 8 views of batch // 8 cells per call (`tta.classify_tta`), so each
backbone runs once per batch of views. Target (issue 11): close to 8x one pass, not 16x or 24x.
Random weights (pretrained=False): speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_allbag.inference.tta import classify_tta  # noqa: E402
from napari_allbag.model.networks import build_ensemble, resolve_backbone  # noqa: E402

#: (backbone, image size, cells = images per call, timed iterations)
CONFIGS = (("resnet10t", 64, 64, 5), ("resnet10t", 128, 64, 3))


def one_pass(ensemble, crops: np.ndarray, batch: int) -> np.ndarray:
    with torch.inference_mode():
        parts = [
            ensemble(torch.from_numpy(crops[i : i + batch])) for i in range(0, len(crops), batch)
        ]
    return torch.cat(parts).numpy()


def bench(name: str, size: int, batch: int, iterations: int, clock=time.perf_counter) -> dict:
    ensemble = build_ensemble(resolve_backbone(name, img_size=size)).to(
        memory_format=torch.channels_last
    )
    crops = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    runs = {
        "one_pass": lambda: one_pass(ensemble, crops, batch),
        "tta": lambda: classify_tta(ensemble, crops, batch_size=batch),
    }
    times: dict[str, list[float]] = {key: [] for key in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(iterations):  # interleaved, so load changes hit both alike
        for key, fn in runs.items():
            start = clock()
            fn()
            times[key].append(clock() - start)
    seconds = {key: statistics.median(values) for key, values in times.items()}
    return {
        "backbone": name,
        "img_size": size,
        "cells": batch,
        "batch": batch,
        "iterations": iterations,
        "one_pass_cells_per_s": batch / seconds["one_pass"],
        "tta_cells_per_s": batch / seconds["tta"],
        "tta_over_one_pass": seconds["tta"] / seconds["one_pass"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args(argv)
    clock = time.perf_counter
    if args.clock == "cpu":
        torch.set_num_threads(1)
        clock = time.thread_time
    elif args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, {args.clock} clock"
    )
    print(
        f"{'backbone':<12}{'px':>5}{'cells':>7}{'1 pass c/s':>12}{'TTA c/s':>10}{'TTA/1 pass':>12}"
    )
    rows = []
    for name, size, batch, iterations in CONFIGS:
        row = bench(name, size, batch, iterations, clock)
        rows.append(row)
        print(
            f"{name:<12}{size:>5}{batch:>7}{row['one_pass_cells_per_s']:>12.1f}"
            f"{row['tta_cells_per_s']:>10.1f}{row['tta_over_one_pass']:>11.2f}x"
        )
    ok = all(row["tta_over_one_pass"] <= 9.0 for row in rows)
    print("target (TTA <= 9x one pass, i.e. close to 8x): " + ("met" if ok else "NOT met"))
    if args.json:
        summary = {"threads": torch.get_num_threads(), "clock": args.clock, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
