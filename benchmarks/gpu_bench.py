"""GPU benchmark: ensemble cells/s end to end from uint8 crops in host memory (one script).

Needs torch and timm only (no napari, OpenCV or scikit-image): it imports `napari_allbag.model.networks`
and `napari_allbag.inference.classify` straight from src/, which import neither.

    python benchmarks/gpu_bench.py --out gpu_bench.json             # on a CUDA machine, < 5 min
    python benchmarks/gpu_bench.py --smoke --out /tmp/smoke.json    # tiny settings, CPU is fine

Section "predict": inception_resnet_v2 at 299, batch 256, channels_last, random weights:
  * engine  - the real inference engine (`inference.EnsembleRunner`): pinned uint8 host batches,
              upload on a side stream overlapping compute, uint8 -> float on the GPU, results back
              into pinned memory; eager and torch.compile, fp32 and bf16 autocast;
  * on-gpu  - the same ensemble with the crops already on the GPU (no transfer), for reference;
  * one-pass / naive - one backbone pass, and model-A + model-B + combined run separately
              (four passes), bf16 eager, for the ensemble's cost ratio.
Target (issue 3): >= 2,000 cells/s on one H100, end to end.

More sections: `benchmarks/gpu_bench_train.py`, if present, is imported and its
`register(add_section)` called; `add_section(name, function, help)` with
`function(ctx: BenchContext) -> list[dict]` (one dict per table row). `--sections a,b` picks
sections (default: all). Each row/section that fails is recorded with its error; the rest run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from napari_allbag.inference import classify as inference  # noqa: E402
from napari_allbag.model import networks as models  # noqa: E402


@dataclass
class BenchContext:
    """What a section gets: parsed arguments, device, smoke flag, helpers and a deadline."""

    args: argparse.Namespace
    device: torch.device
    smoke: bool
    deadline: float  # time.perf_counter() value after which sections should skip work
    models: Any = models
    inference: Any = inference
    notes: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(message, flush=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_left(self) -> float:
        return self.deadline - time.perf_counter()

    def measure(self, fn: Callable[[], Any], iterations: int, warmup: int = 1) -> float:
        """Seconds per call of `fn` (synchronised), after `warmup` untimed calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        self.sync()
        return (time.perf_counter() - start) / max(1, iterations)


Section = Callable[[BenchContext], list[dict]]
SECTIONS: dict[str, tuple[Section, str]] = {}


def add_section(name: str, function: Section, help: str = "") -> None:
    """Register a benchmark section (used by gpu_bench_train.py and friends)."""
    SECTIONS[name] = (function, help)


# ----------------------------------------------------------------------------- predict section


def _settings(ctx: BenchContext) -> SimpleNamespace:
    if ctx.smoke:
        return SimpleNamespace(
            backbone="test_resnet", img_size=64, batch=8, batches=3, host_batches=2
        )
    return SimpleNamespace(
        backbone=ctx.args.backbone,
        img_size=ctx.args.img_size,
        batch=ctx.args.batch_size,
        batches=ctx.args.batches,
        host_batches=4,
    )


def _build_ensemble(ctx: BenchContext, cfg: SimpleNamespace) -> models.Ensemble:
    config = models.resolve_backbone(cfg.backbone, img_size=cfg.img_size)
    ensemble = models.build_ensemble(config, pretrained=False)
    return ensemble.to(device=ctx.device, memory_format=torch.channels_last).eval()


def _host_batches(ctx: BenchContext, cfg: SimpleNamespace) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (cfg.batch, cfg.img_size, cfg.img_size, 3)
    batches = [
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        for _ in range(cfg.host_batches)
    ]
    if ctx.device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
    return batches


def _engine_row(ctx, cfg, ensemble, host, compiled: bool, precision: str) -> dict:
    bundle = SimpleNamespace(ensemble=ensemble, device=ctx.device)
    runner = inference.EnsembleRunner(bundle, ctx.device, cfg.batch, compile=compiled)
    runner.autocast = None if precision == "fp32" else torch.bfloat16
    depth = inference.PIPELINE_DEPTH

    def stream(count: int) -> None:
        in_flight = []
        for index in range(count):
            in_flight.append(runner.submit(host[index % len(host)]))
            if len(in_flight) >= depth:
                in_flight.pop(0).result()
        for handle in in_flight:
            handle.result()

    start = time.perf_counter()
    stream(2 if ctx.smoke else 3)  # warm-up (compilation, cuDNN autotuning)
    warmup_s = time.perf_counter() - start
    seconds = ctx.measure(lambda: stream(cfg.batches), iterations=1, warmup=0)
    cells = cfg.batch * cfg.batches
    return {
        "what": "engine: host uint8 -> host probs",
        "mode": "compiled" if compiled else "eager",
        "precision": precision,
        "batch": cfg.batch,
        "cells": cells,
        "cells_per_s": cells / seconds,
        "warmup_s": warmup_s,
    }


def _autocast(ctx, precision):
    if precision == "bf16":
        return torch.autocast(ctx.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _on_device_rows(ctx, cfg, ensemble, host) -> list[dict]:
    """Crops already on the device: ensemble, one backbone pass, and the naive four passes."""
    crops = host[0].to(ctx.device)
    model_a, model_b = ensemble.model_a, ensemble.model_b
    combined = ensemble.combined_model()
    preprocess = ensemble.preprocess
    runs = {
        "ensemble (2 passes)": lambda: ensemble(crops),
        "one backbone pass": lambda: model_a.forward_features(preprocess(crops)),
        "naive A + B + combined (4 passes)": lambda: (
            model_a(preprocess(crops)).softmax(-1),
            model_b(preprocess(crops)).softmax(-1),
            combined(preprocess(crops)).softmax(-1),
        ),
    }
    rows = []
    iterations = 2 if ctx.smoke else max(3, cfg.batches // 2)
    with torch.inference_mode(), _autocast(ctx, "bf16"):
        for what, fn in runs.items():
            seconds = ctx.measure(fn, iterations, warmup=1)
            rows.append(
                {
                    "what": f"on-device: {what}",
                    "mode": "eager",
                    "precision": "bf16",
                    "batch": cfg.batch,
                    "cells": cfg.batch * iterations,
                    "cells_per_s": cfg.batch / seconds,
                }
            )
    one = rows[1]["cells_per_s"]
    rows[0]["ensemble_over_one_pass"] = one / rows[0]["cells_per_s"]
    rows[0]["speedup_vs_naive"] = rows[0]["cells_per_s"] / rows[2]["cells_per_s"]
    return rows


def predict_section(ctx: BenchContext) -> list[dict]:
    cfg = _settings(ctx)
    ctx.log(
        f"predict: {cfg.backbone} at {cfg.img_size}px, batch {cfg.batch}, {cfg.batches} timed "
        "batches per row"
    )
    ensemble = _build_ensemble(ctx, cfg)
    host = _host_batches(ctx, cfg)
    rows: list[dict] = []
    variants = [(False, "bf16"), (False, "fp32"), (True, "bf16"), (True, "fp32")]
    if ctx.args.no_compile:
        variants = [v for v in variants if not v[0]]
    for compiled, precision in variants:
        label = f"engine {'compiled' if compiled else 'eager'} {precision}"
        if ctx.time_left() < (90 if compiled else 10):
            rows.append({"what": label, "skipped": "time budget"})
            ctx.log(f"  {label}: skipped (time budget)")
            continue
        try:
            row = _engine_row(ctx, cfg, ensemble, host, compiled, precision)
        except Exception as error:  # noqa: BLE001 - record and go on with the other rows
            row = {"what": label, "error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        rows.append(row)
        ctx.log("  " + _format_row(row))
        if compiled:
            torch._dynamo.reset()
    try:
        for row in _on_device_rows(ctx, cfg, ensemble, host):
            rows.append(row)
            ctx.log("  " + _format_row(row))
    except Exception as error:  # noqa: BLE001
        rows.append({"what": "on-device rows", "error": f"{type(error).__name__}: {error}"})
        traceback.print_exc()
    return rows


add_section("predict", predict_section, "ensemble inference cells/s (issue 3)")


# ----------------------------------------------------------------------------- driver


def _format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['what']}: ERROR {row['error']}"
    if "skipped" in row:
        return f"{row['what']}: skipped ({row['skipped']})"
    parts = [f"{row.get('what', '')} [{row.get('mode', '')} {row.get('precision', '')}]"]
    for key, value in row.items():
        if key in ("what", "mode", "precision"):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def _load_extra_sections() -> list[str]:
    """Import gpu_bench_*.py plug-ins beside this file that define `register(add_section)`."""
    errors = []
    for path in sorted(HERE.glob("gpu_bench_*.py")):
        try:
            module = importlib.import_module(path.stem)
            register = getattr(module, "register", None)
            if register is not None:
                register(add_section)
        except Exception as error:  # noqa: BLE001 - a broken plug-in must not stop the rest
            errors.append(f"{path.name}: {type(error).__name__}: {error}")
            traceback.print_exc()
    return errors


def _environment(device: torch.device) -> dict:
    import timm

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": str(device),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def main(argv: list[str] | None = None) -> int:
    plugin_errors = _load_extra_sections()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--sections", default="", help=f"comma-separated, of: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings (CPU is fine)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--backbone", default="inception_resnet_v2")
    parser.add_argument("--img-size", type=int, default=299)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per engine row")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument(
        "--budget-s", type=float, default=270.0, help="stop starting work after this"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    wanted = [s for s in args.sections.split(",") if s] or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    started = time.perf_counter()
    ctx = BenchContext(args, device, args.smoke, started + args.budget_s)
    report: dict[str, Any] = {
        "environment": _environment(device),
        "smoke": args.smoke,
        "sections": {},
        "errors": list(plugin_errors),
    }
    ctx.log(json.dumps(report["environment"]))
    for name in wanted:
        function, _ = SECTIONS[name]
        section_start = time.perf_counter()
        try:
            rows = function(ctx)
        except Exception as error:  # noqa: BLE001 - record and run the other sections
            traceback.print_exc()
            rows = [{"what": name, "error": f"{type(error).__name__}: {error}"}]
            report["errors"].append(f"{name}: {type(error).__name__}: {error}")
        report["sections"][name] = {"rows": rows, "seconds": time.perf_counter() - section_start}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))  # after each section
    report["total_seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{'section':<10}{'row':<62}{'cells/s':>10}")
    for name, section in report["sections"].items():
        for row in section["rows"]:
            rate = row.get("cells_per_s") or row.get("images_per_s")
            label = (
                f"{row.get('what', '')} {row.get('mode', '')} {row.get('precision', '')}".strip()
            )
            value = (
                f"{rate:>10.1f}"
                if isinstance(rate, float)
                else f"{row.get('error') or row.get('skipped', '')}"
            )
            print(f"{name:<10}{label[:61]:<62}{value}")
    print(f"total {report['total_seconds']:.0f} s -> {args.out}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
