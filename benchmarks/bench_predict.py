"""Ensemble inference speed on the CPU: shared features (2 backbone passes) against the naive way.

The naive way runs model-A, model-B and the combined model separately, as three networks:
four backbone passes per cell (the combined model runs both backbones again). The ensemble runs
each backbone once and feeds its features to its own head and to the combined head.

    python benchmarks/bench_predict.py            # resnet10t at 64 and 128, inception_resnet_v2 at 299
    python benchmarks/bench_predict.py --quick    # resnet10t only
    python benchmarks/bench_predict.py --clock cpu   # CPU time, 1 thread: steadier on a busy machine

Targets (issue 3): ensemble cost <= 2.2x one backbone pass; >= 1.8x faster than the naive way.
Random weights (pretrained=False): speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_allbag.model.networks import (  # noqa: E402
    CombinedHead,
    CombinedModel,
    Ensemble,
    Preprocess,
    Stage1Model,
    create_backbone,
    resolve_backbone,
)

#: (backbone, image size, batch, timed iterations)
CONFIGS = (
    ("resnet10t", 64, 32, 7),
    ("resnet10t", 128, 32, 5),
    ("inception_resnet_v2", 299, 8, 3),
)


def build(name: str, size: int):
    config = resolve_backbone(name, img_size=size)
    model_a = Stage1Model(create_backbone(name, pretrained=False))
    model_b = Stage1Model(create_backbone(name, pretrained=False))
    head = CombinedHead(model_a.num_features, model_b.num_features)
    preprocess = Preprocess(config)
    ensemble = Ensemble(model_a, model_b, head, preprocess)
    combined = CombinedModel(model_a, model_b, head)
    for module in (ensemble, combined):
        module.eval().to(memory_format=torch.channels_last)
    return model_a, model_b, combined, preprocess, ensemble


def bench(name: str, size: int, batch: int, iterations: int, clock=time.perf_counter) -> dict:
    model_a, model_b, combined, preprocess, ensemble = build(name, size)
    crops = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)

    def one_pass():
        return model_a.forward_features(preprocess(crops))

    def shared():
        return ensemble(crops)

    def naive():
        return torch.stack(
            [
                model_a(preprocess(crops)).softmax(-1),
                model_b(preprocess(crops)).softmax(-1),
                combined(preprocess(crops)).softmax(-1),
            ],
            dim=1,
        )

    runs = {"one_pass": one_pass, "ensemble": shared, "naive": naive}
    times: dict[str, list[float]] = {key: [] for key in runs}
    with torch.inference_mode():
        assert torch.allclose(shared(), naive(), atol=1e-5), "ensemble and naive disagree"
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(iterations):  # interleaved, so load changes hit all three alike
            for key, fn in runs.items():
                start = clock()
                fn()
                times[key].append(clock() - start)
    seconds = {key: statistics.median(values) for key, values in times.items()}
    return {
        "backbone": name,
        "img_size": size,
        "batch": batch,
        "iterations": iterations,
        "one_pass_cells_per_s": batch / seconds["one_pass"],
        "ensemble_cells_per_s": batch / seconds["ensemble"],
        "naive_cells_per_s": batch / seconds["naive"],
        "ensemble_over_one_pass": seconds["ensemble"] / seconds["one_pass"],
        "speedup_vs_naive": seconds["naive"] / seconds["ensemble"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet10t only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this thread's CPU time with one torch thread, which other "
        "processes on a busy machine disturb far less",
    )
    args = parser.parse_args(argv)
    clock = time.perf_counter
    if args.clock == "cpu":
        torch.set_num_threads(1)
        clock = time.thread_time
    elif args.threads:
        torch.set_num_threads(args.threads)
    configs = [c for c in CONFIGS if not args.quick or c[0] == "resnet10t"]
    print(
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, {args.clock} clock"
    )
    header = (
        f"{'backbone':<22}{'px':>5}{'batch':>6}{'1 pass c/s':>12}{'ensemble c/s':>14}"
        f"{'naive c/s':>11}{'ens/1 pass':>12}{'vs naive':>10}"
    )
    print(header)
    rows = []
    for name, size, batch, iterations in configs:
        row = bench(name, size, batch, iterations, clock)
        rows.append(row)
        print(
            f"{name:<22}{size:>5}{batch:>6}{row['one_pass_cells_per_s']:>12.1f}"
            f"{row['ensemble_cells_per_s']:>14.1f}{row['naive_cells_per_s']:>11.1f}"
            f"{row['ensemble_over_one_pass']:>11.2f}x{row['speedup_vs_naive']:>9.2f}x"
        )
    ok = all(r["ensemble_over_one_pass"] <= 2.2 and r["speedup_vs_naive"] >= 1.8 for r in rows)
    print(
        "targets (ensemble <= 2.2x one pass, >= 1.8x faster than naive): "
        + ("met" if ok else "NOT met")
    )
    if args.json:
        summary = {"threads": torch.get_num_threads(), "clock": args.clock, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
