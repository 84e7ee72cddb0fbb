"""GPU benchmark section "train" for `benchmarks/gpu_bench.py`: stage-1 training images/s.

Imports only torch, timm and `napari_allbag.model.networks` (plus `napari_allbag.data.augment`, pure torch, when
present), so it runs on a GPU machine without napari or OpenCV.

    python benchmarks/gpu_bench.py --sections train --out gpu_bench_train.json
    python benchmarks/gpu_bench.py --sections train --smoke --out /tmp/smoke.json   # CPU is fine
    python benchmarks/gpu_bench_train.py --smoke                                    # stand-alone

Rows (inception_resnet_v2 at 299, batch 64, channels_last, random weights, the trainer's step:
pinned uint8 crops -> device -> normalise/resize on the device -> autocast -> RMSprop step):
  * stage-1 step, bf16 autocast (and fp16 + GradScaler where bf16 is missing);
  * the same with half of each batch augmented on the device (set A/B are half augmented);
  * validation forward (eval, no grad), and a stage-2 epoch on cached feature vectors;
  * an estimate of the paper's whole two-stage training on the 10,661 C-NMC training cells.
Target (issue 4): stage-1 >= 1,000 images/s on one H100.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from napari_allbag.model import networks as models  # noqa: E402

try:  # pure torch; optional so that the section runs with models.py alone
    from napari_allbag.data.augment import augment_batch  # noqa: E402
except ImportError:  # pragma: no cover
    augment_batch = None

#: C-NMC training data (Liu & Long 2019): 7,272 ALL + 3,389 HEM cells; 7:3 split.
CNMC_ALL, CNMC_HEM = 7272, 3389
KERAS_RMSPROP = {"alpha": 0.9, "eps": 1e-7}


def _settings(ctx) -> SimpleNamespace:
    if ctx.smoke:
        return SimpleNamespace(backbone="test_resnet", img_size=64, crop=64, batch=8, steps=3)
    return SimpleNamespace(
        backbone="inception_resnet_v2", img_size=299, crop=299, batch=64, steps=30
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _precisions(device: torch.device) -> list[tuple[str, torch.dtype | None]]:
    if device.type != "cuda":
        return [("fp32", None)]
    if torch.cuda.is_bf16_supported():
        return [("bf16", torch.bfloat16)]
    return [("fp16", torch.float16)]


def _measure(ctx, fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ctx.sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    ctx.sync()
    return (time.perf_counter() - start) / steps


def _stage1_rows(ctx, cfg) -> tuple[list[dict], dict[str, float]]:
    device = ctx.device
    config = models.resolve_backbone(cfg.backbone, img_size=cfg.img_size)
    torch.manual_seed(0)
    model = models.Stage1Model(models.create_backbone(cfg.backbone, pretrained=False))
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).train()
    preprocess = models.Preprocess(config).to(device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, **KERAS_RMSPROP)
    generator = torch.Generator().manual_seed(0)
    biggest = 2 * cfg.batch
    host = [
        torch.randint(
            0, 256, (biggest, cfg.crop, cfg.crop, 3), dtype=torch.uint8, generator=generator
        )
        for _ in range(3)
    ]
    labels_host = [torch.randint(0, 2, (biggest,), generator=generator) for _ in host]
    if device.type == "cuda":
        host = [h.pin_memory() for h in host]
        labels_host = [y.pin_memory() for y in labels_host]
    augment_gen = torch.Generator(device=device if device.type == "cuda" else "cpu")
    augment_gen.manual_seed(0)
    rows, rates = [], {}
    counter = [0]
    compiled_model = None
    variants = [
        ("stage-1 step", cfg.batch, False, False),
        ("stage-1 step + augment half", cfg.batch, True, False),
        ("stage-1 step, batch x2", biggest, False, False),
        ("stage-1 step, torch.compile", cfg.batch, False, True),
        ("stage-1 step + augment half, torch.compile", cfg.batch, True, True),
    ]
    precision, dtype = _precisions(device)[0]
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    for what, batch, augmented, compiled in variants:
        if augmented and augment_batch is None:
            continue
        if compiled and (ctx.smoke and device.type != "cuda" or ctx.time_left() < 90):
            rows.append({"what": what, "skipped": "smoke on CPU or time budget"})
            continue
        if compiled and compiled_model is None:
            compiled_model = torch.compile(model)
        runner = compiled_model if compiled else model
        mask = torch.arange(batch, device=device) % 2 == 0

        def step(runner=runner, batch=batch, augmented=augmented, mask=mask) -> None:
            index = counter[0] % len(host)
            counter[0] += 1
            crops = host[index][:batch].to(device, non_blocking=True).permute(0, 3, 1, 2)
            labels = labels_host[index][:batch].to(device, non_blocking=True)
            if augmented:
                crops = augment_batch(crops, augment_gen, mask=mask)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, dtype):
                logits = runner(preprocess(crops))
            loss = F.cross_entropy(logits.float(), labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()

        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
            step()  # the first call compiles, where asked
            ctx.sync()
            first_s = time.perf_counter() - started
            seconds = _measure(ctx, step, cfg.steps)
        except Exception as error:  # noqa: BLE001 - record and go on with the other rows
            rows.append({"what": what, "error": f"{type(error).__name__}: {error}"})
            ctx.log(f"  {what}: ERROR {rows[-1]['error']}")
            continue
        rows.append(
            {
                "what": what,
                "mode": "compiled" if compiled else "eager",
                "precision": precision,
                "batch": batch,
                "backbone": cfg.backbone,
                "img_size": cfg.img_size,
                "images_per_s": batch / seconds,
                "first_step_s": first_s,
                "peak_mem_gib": _peak_memory(device),
            }
        )
        if batch == cfg.batch:
            key = ("augment" if augmented else "plain") + ("_compiled" if compiled else "")
            rates[key] = batch / seconds
        ctx.log("  " + _format(rows[-1]))

    model.eval()
    eval_batch = host[0][: cfg.batch].to(device)

    def forward() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            model(preprocess(eval_batch.permute(0, 3, 1, 2)))

    seconds = _measure(ctx, forward, cfg.steps)
    rows.append(
        {
            "what": "validation forward",
            "mode": "eager",
            "precision": precision,
            "batch": cfg.batch,
            "images_per_s": cfg.batch / seconds,
        }
    )
    rates["eval"] = cfg.batch / seconds
    ctx.log("  " + _format(rows[-1]))
    return rows, {**rates, "features": model.num_features}


def _stage2_row(ctx, cfg, features: int) -> dict:
    """One stage-2 epoch on cached features of the C-NMC training split (frozen backbones)."""
    device = ctx.device
    n = 64 if ctx.smoke else int(0.7 * (CNMC_ALL + CNMC_HEM))
    head = models.CombinedHead(features, features).to(device).train()
    optimizer = torch.optim.RMSprop(head.parameters(), lr=1e-3, **KERAS_RMSPROP)
    fa = torch.randn(n, features, device=device)
    fb = torch.randn(n, features, device=device)
    labels = torch.randint(0, 2, (n,), device=device)
    weights = torch.tensor([1.0, 2.5], device=device)

    def epoch() -> None:
        order = torch.randperm(n, device=device)
        for start in range(0, n, cfg.batch):
            index = order[start : start + cfg.batch]
            if len(index) < 2:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(fa[index], fb[index]), labels[index], weight=weights)
            loss.backward()
            optimizer.step()

    seconds = _measure(ctx, epoch, 2 if ctx.smoke else 5, warmup=1)
    return {
        "what": "stage-2 epoch on cached features",
        "mode": "eager",
        "precision": "fp32",
        "batch": cfg.batch,
        "cells": n,
        "seconds_per_epoch": seconds,
        "images_per_s": n / seconds,
    }


def _estimate(
    rates: dict[str, float], stage2_epoch_s: float, epochs: int = 50, label: str = "eager"
) -> dict:
    """Minutes for the paper's training on the C-NMC training cells, all 50 epochs run."""
    train_all, train_hem = 0.7 * CNMC_ALL, 0.7 * CNMC_HEM
    val = 0.3 * (CNMC_ALL + CNMC_HEM)
    set_size = train_all + 2 * train_hem  # own ALL half + augmented other half + HEM + aug. HEM
    augmented_share = (train_all / 2 + train_hem) / set_size
    train_rate = (
        1 / ((1 - augmented_share) / rates["plain"] + augmented_share / rates["augment"])
        if "augment" in rates
        else rates["plain"]
    )
    stage1_epoch = set_size / train_rate + val / rates["eval"]
    features = 2 * (train_all + train_hem + val) / rates["eval"]
    total_s = 2 * epochs * stage1_epoch + features + epochs * stage2_epoch_s
    return {
        "what": f"estimate: whole training, {epochs} epochs per stage (no early stop)",
        "mode": label,
        "precision": "",
        "stage1_epoch_s": stage1_epoch,
        "minutes": total_s / 60,
    }


def _peak_memory(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _format(row: dict) -> str:
    parts = [f"{row.get('what')} [{row.get('precision', '')}]"]
    parts += [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in row.items()
        if k not in ("what", "precision", "mode")
    ]
    return " ".join(parts)


def train_section(ctx) -> list[dict]:
    cfg = _settings(ctx)
    ctx.log(f"train: {cfg.backbone} at {cfg.img_size}px, batch {cfg.batch}, {cfg.steps} steps/row")
    rows, rates = _stage1_rows(ctx, cfg)
    stage2 = _stage2_row(ctx, cfg, int(rates["features"]))
    ctx.log("  " + _format(stage2))
    rows.append(stage2)
    rows.append(_estimate(rates, stage2["seconds_per_epoch"]))
    ctx.log("  " + _format(rows[-1]))
    if "plain_compiled" in rates:
        compiled = {**rates, "plain": rates["plain_compiled"]}
        compiled["augment"] = rates.get("augment_compiled", rates["plain_compiled"])
        rows.append(_estimate(compiled, stage2["seconds_per_epoch"], label="torch.compile"))
        ctx.log("  " + _format(rows[-1]))
    return rows


def register(add_section) -> None:
    add_section("train", train_section, "stage-1 training images/s (issue 4)")


def main(argv: list[str] | None = None) -> int:
    """Stand-alone run (without gpu_bench.py): prints the rows."""
    parser = argparse.ArgumentParser(description="stage-1 training images/s")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    class Context:
        smoke = args.smoke

        def __init__(self) -> None:
            self.device = device

        def log(self, message: str) -> None:
            print(message, flush=True)

        def sync(self) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

    train_section(Context())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
