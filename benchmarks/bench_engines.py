"""CPU inference engines for the ensemble, side by side in one run (issue 14, target 2).

    python benchmarks/bench_engines.py                      # inception_resnet_v2 at 299, 2 threads
    python benchmarks/bench_engines.py --backbone resnet10t --img-size 64 --quick   # smoke test
    python benchmarks/bench_engines.py --skip compile,ort-int8   # leave slow candidates out

Candidates: eager fp32 PyTorch as `classify_crops` runs it today (the baseline: channels_last,
inference_mode), eager without channels_last, bf16 autocast, torch.compile (inductor, frozen
weights; compile time printed apart), dynamic int8 (Linear layers only), ONNX Runtime fp32 and
static int8 (QDQ, calibrated on real crops), OpenVINO f32, bf16 and int8 (the same QDQ graph),
OpenVINO f32 with the THROUGHPUT hint (streams, async queue) and NNCF int8 (all of the backbones,
or with the stem kept fp32; needs `pip install nncf`, skipped without it).

Weights are random (pretrained=False; speed does not depend on them), made to give varied
predictions: BatchNorm statistics are recomputed on real crops and each head is scaled and
centred so P(ALL) spreads around 0.5 and both labels occur. Agreement is measured against eager
fp32 on every real cell (`../shared/data/cnmc_sample`, segmented here; random crops without it):
max |dp| over the (N, 3, 2) probabilities and identical labels. Speed: `--rounds` interleaved
rounds over `--crops` cells per candidate, median cells/s; the ratio to the baseline in the same
run is what counts on a shared machine. Target: >= 3x the baseline, max |dp| <= 0.01, labels equal.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_allbag.inference import engines  # noqa: E402
from napari_allbag.model.networks import (  # noqa: E402
    Ensemble,
    build_ensemble,
    decide,
    resolve_backbone,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cnmc_sample"
CALIBRATION_CELLS = 16
Runner = Callable[[np.ndarray], np.ndarray]


def real_crops(size: int, data: Path, limit: int | None = None) -> np.ndarray | None:
    """The C-NMC sample's cells, segmented as `predict` does (None when the data is absent)."""
    from napari_allbag.segmentation.dark import SegmentationParams, segment_file

    paths = sorted(Path(data).rglob("*.bmp"))[:limit]
    if not paths:
        return None
    params = SegmentationParams(crop_size=size)
    return np.concatenate([segment_file(path, params).crops for path in paths])


def make_varied(ensemble: Ensemble, crops: np.ndarray) -> None:
    """Recompute BatchNorm statistics on `crops`, then scale and centre the heads' logits."""
    for module in ensemble.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    pixels = torch.from_numpy(crops)
    with torch.no_grad():
        ensemble.train()(pixels)
        ensemble.eval()
        logits = ensemble.forward_logits(pixels)
    heads = (ensemble.model_a.head, ensemble.model_b.head, ensemble.head.mlp[-1])
    with torch.no_grad():
        for index, head in enumerate(heads):
            margin = logits[:, index, 1] - logits[:, index, 0]
            scale = 1.5 / float(margin.std().clamp_min(1e-6))
            head.weight.mul_(scale)
            head.bias.mul_(scale)
            head.bias[1] -= float(margin.median()) * scale


def timed_rate(run: Runner, crops: np.ndarray, clock: Callable[[], float]) -> float:
    start = clock()
    run(crops)
    return crops.shape[0] / max(clock() - start, 1e-9)


# ----------------------------------------------------------------------------- candidates


def torch_runner(module: torch.nn.Module, batch: int, autocast: bool = False) -> Runner:
    """Eager (or compiled) PyTorch over batches, inference_mode, optional bf16 autocast."""

    def run(crops: np.ndarray) -> np.ndarray:
        out = []
        for first in range(0, crops.shape[0], batch):
            part = torch.from_numpy(crops[first : first + batch])
            count = part.shape[0]
            if count < batch:  # a fixed shape for the compiled candidate
                part = torch.cat([part, part.new_zeros((batch - count, *part.shape[1:]))])
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                out.append(module(part).float()[:count].numpy())
        return np.concatenate(out)

    return run


def quantize_qdq(onnx_path: Path, crops: np.ndarray, folder: Path) -> Path:
    """Static int8 QDQ (per-channel int8 weights, uint8 activations), calibrated on `crops`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"crops": crops[i : i + 4]} for i in range(0, len(crops), 4)])

        def get_next(self):
            return next(self.batches, None)

    prepared, quantized = folder / "prepared.onnx", folder / "int8.onnx"
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(quantized),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return quantized


def build_candidates(
    ensemble: Ensemble, calibration: np.ndarray, args: argparse.Namespace, folder: Path
) -> tuple[dict[str, Runner], dict[str, float]]:
    """Every candidate that can run here, and the seconds each took to set up."""
    size, batch, skip = args.img_size, args.batch, set(args.skip)
    runners: dict[str, Runner] = {}
    setup: dict[str, float] = {}

    def add(name: str, make: Callable[[], Runner]) -> None:
        if name in skip:
            return
        start = time.perf_counter()
        try:
            runners[name] = make()
        except Exception as error:  # noqa: BLE001 - report the candidate and go on
            print(f"{name}: not available ({type(error).__name__}: {error})", flush=True)
            return
        setup[name] = time.perf_counter() - start
        print(f"{name}: ready in {setup[name]:.1f} s", flush=True)

    add("torch", lambda: engines.make_engine("torch", ensemble, "cpu", batch).run)
    plain = copy.deepcopy(ensemble).to(memory_format=torch.contiguous_format)
    add("torch-no-channels-last", lambda: torch_runner(plain, batch))
    add("torch-bf16", lambda: torch_runner(ensemble, batch, autocast=True))
    add("torch-dynamic-int8", lambda: torch_runner(dynamic_int8(ensemble), batch))
    add("compile", lambda: compiled_runner(ensemble, batch, size))
    exported = folder / "exports"
    add("onnx-export", lambda: _export(ensemble, size, exported))
    onnx_path = next(exported.glob("*.onnx"), None)
    if onnx_path is None:
        return runners, setup
    runners.pop("onnx-export", None)
    add("onnxruntime", lambda: engines.onnxruntime_engine(onnx_path, batch).run)
    add("openvino", lambda: engines.openvino_engine(onnx_path, batch, "f32").run)
    add("openvino-bf16", lambda: engines.openvino_engine(onnx_path, batch, "bf16").run)
    add("openvino-throughput", lambda: openvino_async(onnx_path, batch))
    for name, keep in NNCF_VARIANTS.items():
        add(name, lambda keep=keep: openvino_async(nncf_int8(onnx_path, calibration, keep), batch))
    if not {"ort-int8", "openvino-int8"} <= skip:
        start = time.perf_counter()
        int8_path = quantize_qdq(onnx_path, calibration, folder)
        setup["int8-quantise"] = time.perf_counter() - start
        add("ort-int8", lambda: engines.onnxruntime_engine(int8_path, batch).run)
        add("openvino-int8", lambda: engines.openvino_engine(int8_path, batch, "f32").run)
    return runners, setup


#: NNCF int8 candidates: the parts of each backbone kept in fp32 (heads always kept fp32).
NNCF_VARIANTS = {
    "openvino-nncf-int8": (),
    "openvino-nncf-int8-stem-fp32": (
        "conv2d_1a",
        "conv2d_2a",
        "conv2d_2b",
        "conv2d_3b",
        "conv2d_4a",
    ),
}


def nncf_int8(onnx_path: Path, crops: np.ndarray, keep_fp32: tuple[str, ...]):
    """An OpenVINO model quantised by NNCF (int8, per-channel symmetric weights, min-max
    activations calibrated on `crops`), the heads and the named backbone parts left in fp32."""
    import nncf
    import openvino as ov

    patterns = [".*Gemm.*", ".*/head.*", *(f".*/backbone/{part}/.*" for part in keep_fp32)]
    dataset = nncf.Dataset([crops[i : i + 4] for i in range(0, len(crops), 4)])
    return nncf.quantize(
        ov.Core().read_model(str(onnx_path)),
        dataset,
        subset_size=len(crops),
        ignored_scope=nncf.IgnoredScope(patterns=patterns, validate=False),
    )


def openvino_async(model, batch: int) -> Runner:
    """OpenVINO f32 precision hint, THROUGHPUT hint (streams), batches in an async queue."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model)) if isinstance(model, Path) else model
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": engines._threads(),
        "PERFORMANCE_HINT": "THROUGHPUT",
    }
    compiled = core.compile_model(model, "CPU", config)
    requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")

    def run(crops: np.ndarray) -> np.ndarray:
        queue, out = ov.AsyncInferQueue(compiled, requests), {}
        queue.set_callback(
            lambda request, i: out.__setitem__(i, request.get_output_tensor(0).data.copy())
        )
        for first in range(0, len(crops), batch):
            queue.start_async({0: np.ascontiguousarray(crops[first : first + batch])}, first)
        queue.wait_all()
        return np.concatenate([out[key] for key in sorted(out)])

    return run


def _export(ensemble: Ensemble, size: int, folder: Path) -> Runner:
    engines.export_onnx(ensemble, size, folder)
    return lambda crops: crops


def dynamic_int8(ensemble: Ensemble) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(ensemble), {torch.nn.Linear}, dtype=torch.qint8)


def compiled_runner(ensemble: Ensemble, batch: int, size: int) -> Runner:
    """torch.compile (inductor, frozen weights, fixed batch); the first call compiles."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    model = torch.compile(ensemble, dynamic=False)
    run = torch_runner(model, batch)
    run(np.zeros((batch, size, size, 3), np.uint8))
    return run


# ----------------------------------------------------------------------------- the run


def measure(args: argparse.Namespace) -> dict:
    """Every candidate's agreement with fp32 torch and its speed; exported files removed after."""
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        return _measure(args, Path(folder))


def _measure(args: argparse.Namespace, folder: Path) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = resolve_backbone(args.backbone, img_size=args.img_size)
    ensemble = build_ensemble(config).to(memory_format=torch.channels_last)
    crops = real_crops(args.img_size, args.data, limit=args.cells)
    source = "real C-NMC cells"
    if crops is None:
        crops = np.random.default_rng(0).integers(0, 256, (62, *(args.img_size,) * 2, 3), np.uint8)
        source = "random crops (real data absent)"
    calibration = crops[:CALIBRATION_CELLS]
    make_varied(ensemble, calibration)
    runners, setup = build_candidates(ensemble, calibration, args, folder)

    reference = runners["torch"](crops)
    labels = decide(reference)[0]
    agreement = {}
    for name, run in runners.items():
        probs = run(crops)
        same = int((decide(probs)[0] == labels).sum())
        agreement[name] = {"max_dp": float(np.abs(probs - reference).max()), "same_labels": same}
        print(f"{name}: max |dp| {agreement[name]['max_dp']:.2e}, labels {same}/{len(labels)}")

    bench = np.resize(crops, (args.crops, *crops.shape[1:]))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        for name, run in runners.items():
            rates[name].append(timed_rate(run, bench, clock))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    base = medians["torch"]
    p_all = reference[..., 1]
    return {
        "backbone": args.backbone,
        "img_size": args.img_size,
        "batch": args.batch,
        "threads": args.threads,
        "clock": args.clock,
        "cells": int(len(crops)),
        "cell_source": source,
        "labels_all": int(labels.sum()),
        "p_all_range": [float(p_all.min()), float(p_all.max())],
        "setup_s": setup,
        "rates": rates,
        "results": {
            name: {
                "cells_per_s": medians[name],
                "vs_torch": medians[name] / base,
                **agreement[name],
            }
            for name in runners
        },
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
    }


def print_table(result: dict) -> None:
    print(
        f"\n{result['backbone']} at {result['img_size']} px, batch {result['batch']}, "
        f"{result['threads']} threads, {result['clock']} clock; {result['cells']} "
        f"{result['cell_source']} ({result['labels_all']} labelled ALL by eager fp32, P(ALL) "
        f"{result['p_all_range'][0]:.2f} to {result['p_all_range'][1]:.2f})"
    )
    print(f"{'engine':<24} {'cells/s':>8} {'vs torch':>9} {'max |dp|':>9} {'labels':>7}")
    for name, row in result["results"].items():
        print(
            f"{name:<24} {row['cells_per_s']:>8.2f} {row['vs_torch']:>8.2f}x "
            f"{row['max_dp']:>9.1e} {row['same_labels']:>4}/{result['cells']}"
        )
    print("setup seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["setup_s"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="inception_resnet_v2")
    parser.add_argument("--img-size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crops", type=int, default=32, help="cells per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cells", type=int, default=None, help="real cells to check (all)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of real cells (BMP)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=[])
    parser.add_argument("--quick", action="store_true", help="8 cells, 1 round, no compile")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.crops, args.rounds = 8, 8, 1
        args.skip = [*args.skip, "compile"]
    result = measure(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
