"""GPU benchmark section "ddp" for `benchmarks/gpu_bench.py`: data-parallel stage-1 images/s.

Starts 1, 2, 4, ... up to all GPUs of the machine as separate processes (one per GPU, NCCL, as
torchrun would) and times the trainer's stage-1 step under DistributedDataParallel: pinned uint8
crops -> GPU -> normalise/resize -> bf16 autocast forward/backward (gradients all-reduced) ->
RMSprop step. 64 images per GPU (the default batch under torchrun), inception_resnet_v2 at 299,
channels_last, random weights. With several GPUs one more row uses SyncBatchNorm, to show what
it costs. On a machine with one GPU the section says so and measures that one (a one-process
DDP run). Without a GPU (`--smoke`, CPU) it runs 1 and 2 gloo processes with a tiny backbone.

    python benchmarks/gpu_bench.py --sections ddp --out gpu_bench_ddp.json
    python benchmarks/gpu_bench.py --sections ddp --smoke --out /tmp/smoke.json   # CPU is fine

Rows: images/s over all processes, per GPU, and the scaling efficiency against one GPU.
Expected: stage 1 is compute-bound, so it scales nearly linearly (all-reduce of ~55 M
parameters per step overlaps the backward pass on NVLink).
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402

KERAS_RMSPROP = {"alpha": 0.9, "eps": 1e-7}
#: Seconds one measurement (process start, model, warm-up, timed steps) may take at most.
RUN_LIMIT_S = 240


def _settings(smoke: bool, cuda: bool) -> SimpleNamespace:
    if smoke or not cuda:
        return SimpleNamespace(
            backbone="test_resnet", img_size=64, crop=64, batch=8, warmup=2, steps=3
        )
    return SimpleNamespace(
        backbone="inception_resnet_v2", img_size=299, crop=299, batch=64, warmup=5, steps=30
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world: int, port: int, options: dict, result_path: str) -> None:
    """One process of the measurement (started by torch.multiprocessing, like torchrun would)."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from napari_allbag.model import networks as models

    cuda = options["cuda"]
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(1)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=RUN_LIMIT_S),
    )
    try:
        torch.manual_seed(0)
        model = models.Stage1Model(models.create_backbone(options["backbone"], pretrained=False))
        if options["sync_bn"]:
            from timm.layers import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        memory_format = torch.channels_last if cuda else torch.contiguous_format
        model = model.to(device=device, memory_format=memory_format).train()
        wrapped = DistributedDataParallel(
            model, device_ids=[rank] if cuda else None, gradient_as_bucket_view=cuda
        )
        preprocess = models.Preprocess(
            models.resolve_backbone(options["backbone"], img_size=options["img_size"])
        ).to(device)
        optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, **KERAS_RMSPROP)
        generator = torch.Generator().manual_seed(rank)
        batch, crop = options["batch"], options["crop"]
        host = [
            torch.randint(0, 256, (batch, crop, crop, 3), dtype=torch.uint8, generator=generator)
            for _ in range(3)
        ]
        labels = [torch.randint(0, 2, (batch,), generator=generator) for _ in host]
        if cuda:
            host = [h.pin_memory() for h in host]
            labels = [y.pin_memory() for y in labels]
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
        counter = [0]

        def step() -> None:
            index = counter[0] % len(host)
            counter[0] += 1
            crops = host[index].to(device, non_blocking=True).permute(0, 3, 1, 2)
            target = labels[index].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            if dtype is not None:
                with torch.autocast("cuda", dtype=dtype):
                    logits = wrapped(preprocess(crops))
            else:
                logits = wrapped(preprocess(crops))
            F.cross_entropy(logits.float(), target).backward()
            optimizer.step()

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)

        for _ in range(options["warmup"]):
            step()
        sync()
        dist.barrier()
        started = time.perf_counter()
        for _ in range(options["steps"]):
            step()
        sync()
        elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
        if cuda:
            elapsed = elapsed.to(device)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if rank == 0:
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
            Path(result_path).write_text(
                json.dumps({"seconds": float(elapsed.item()), "peak_mem_gib": peak})
            )
    finally:
        dist.destroy_process_group()


def _measure(world: int, options: dict) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        started = time.perf_counter()
        mp.start_processes(
            _worker,
            args=(world, _free_port(), options, str(result)),
            nprocs=world,
            join=True,
            start_method="spawn",
        )
        found = json.loads(result.read_text())
    images = world * options["batch"] * options["steps"]
    return {
        "images_per_s": images / found["seconds"],
        "per_process_images_per_s": images / found["seconds"] / world,
        "run_s": time.perf_counter() - started,
        "peak_mem_gib": found["peak_mem_gib"],
    }


def _counts(available: int) -> list[int]:
    counts = {1, available}
    power = 2
    while power < available:
        counts.add(power)
        power *= 2
    return sorted(counts)


def ddp_section(ctx) -> list[dict]:
    cuda = ctx.device.type == "cuda"
    cfg = _settings(ctx.smoke, cuda)
    if cuda:
        available = torch.cuda.device_count()
        unit = "GPU"
    else:
        available = 2  # gloo processes on the CPU: a check that the section works, not a figure
        unit = "CPU process"
    rows: list[dict] = []
    if cuda and available == 1:
        rows.append(
            {
                "what": "ddp: only one GPU on this machine",
                "skipped": "measured that one GPU (a one-process DDP run); no scaling figures",
            }
        )
        ctx.log("  ddp: only one GPU on this machine; measuring that one")
    ctx.log(
        f"ddp: {cfg.backbone} at {cfg.img_size}px, {cfg.batch} images per {unit}, "
        f"{cfg.steps} timed steps, {_counts(available)} {unit}(s)"
    )
    base = dict(
        cuda=cuda,
        backbone=cfg.backbone,
        img_size=cfg.img_size,
        crop=cfg.crop,
        batch=cfg.batch,
        warmup=cfg.warmup,
        steps=cfg.steps,
        sync_bn=False,
    )
    one = None
    plans = [(count, False) for count in _counts(available)]
    if cuda and available > 1:
        plans.append((available, True))
    for count, sync_bn in plans:
        what = f"ddp stage-1 step, {count} {unit}(s)" + (", SyncBatchNorm" if sync_bn else "")
        if ctx.time_left() < (30 if ctx.smoke else 90):
            rows.append({"what": what, "skipped": "time budget"})
            continue
        try:
            figures = _measure(count, {**base, "sync_bn": sync_bn})
        except Exception as error:  # noqa: BLE001 - record and go on with the other rows
            rows.append({"what": what, "error": f"{type(error).__name__}: {error}"})
            ctx.log(f"  {what}: ERROR {rows[-1]['error']}")
            continue
        if count == 1 and not sync_bn:
            one = figures["images_per_s"]
        row = {
            "what": what,
            "mode": "eager",
            "precision": "bf16" if cuda else "fp32",
            "processes": count,
            "batch_per_process": cfg.batch,
            "global_batch": cfg.batch * count,
            "backbone": cfg.backbone,
            "img_size": cfg.img_size,
            **figures,
        }
        if one:
            row["speedup_vs_1"] = figures["images_per_s"] / one
            row["scaling_efficiency"] = figures["images_per_s"] / (one * count)
        rows.append(row)
        ctx.log(
            f"  {what}: {figures['images_per_s']:.1f} images/s "
            f"({figures['per_process_images_per_s']:.1f} per {unit})"
            + (f", efficiency {row['scaling_efficiency']:.2f}" if one else "")
        )
    return rows


def register(add_section) -> None:
    add_section("ddp", ddp_section, "data-parallel stage-1 images/s on 1..N GPUs (issue 6)")
