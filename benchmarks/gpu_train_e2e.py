"""End-to-end training on a GPU: the real trainer on generated C-NMC-like cells, with figures.

    PYTHONPATH=src python3 benchmarks/gpu_train_e2e.py --out /tmp/e2e     # CUDA machine
    python benchmarks/gpu_train_e2e.py --smoke --out /tmp/e2e              # CPU, tiny settings

Runs `training.run.train` (segmentation + crop cache, DataLoader worker processes over the memory map,
pinned memory, augmentation on the device, bf16 autocast, channels_last, checkpoints every epoch)
with random backbone weights, then a short `--finetune-backbones` run. Prints stage-1 training
images/s measured between batch events (validation excluded), the seconds per stage, GPU memory
left allocated after each run, and the validation report. Needs OpenCV (not napari).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402

from napari_allbag.data.synthetic import write_annotated_folder  # noqa: E402
from napari_allbag.training.run import TrainConfig, train  # noqa: E402


def run(config: TrainConfig) -> dict:
    """Drive one run; return its figures."""
    stage_start: dict[str, float] = {}
    stage_end: dict[str, float] = {}
    batch_times: dict[tuple[str, int], list[tuple[float, int]]] = {}
    work = train(config)
    start = time.perf_counter()
    while True:
        try:
            event = next(work)
        except StopIteration as stop:
            result = stop.value
            break
        now = time.perf_counter()
        stage_start.setdefault(event.stage, now)
        stage_end[event.stage] = now
        metrics = event.metrics
        if "batch" in metrics:
            batch_times.setdefault((event.stage, metrics["epoch"]), []).append(
                (now, metrics["batch"])
            )
        if "row" in metrics:
            row = metrics["row"]
            print(
                f"  {row['stage']} epoch {row['epoch']}: loss {row['loss']:.4f} acc "
                f"{row['accuracy']:.3f} val_loss {row['val_loss']:.4f} val_acc "
                f"{row['val_accuracy']:.3f} lr {row['lr']:.0e} {row['seconds']:.1f} s",
                flush=True,
            )
    total = time.perf_counter() - start
    rates = {}
    for (stage, epoch), times in batch_times.items():
        if not stage.startswith("stage1") or epoch == 1 or len(times) < 3:
            continue  # epoch 1 holds the warm-up (cudnn autotuning)
        (t0, _), (t1, _) = times[0], times[-1]
        images = (len(times) - 1) * config.batch_size  # batches after the first event
        rates.setdefault(stage, []).append(images / (t1 - t0))
    figures = {
        "total_s": total,
        "stage_s": {s: stage_end[s] - stage_start[s] for s in stage_start},
        "stage1_images_per_s": {s: max(v) for s, v in rates.items()},
        "weighted_f1": result.report["weighted_f1"],
        "bundle": str(result.bundle_path),
    }
    del result, work
    if torch.cuda.is_available():
        import gc

        gc.collect()
        figures["cuda_allocated_after_mib"] = torch.cuda.memory_allocated() / 2**20
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--cells", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    smoke = args.smoke
    cells = 60 if smoke else args.cells
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        n_all = 2 * cells // 3
        write_annotated_folder(
            data, n_all=n_all, n_hem=cells - n_all, n_subjects=6, seed=0, size=128 if smoke else 450
        )
        common = dict(
            data_dir=data,
            backbone="test_resnet" if smoke else "inception_resnet_v2",
            img_size=64 if smoke else None,
            crop_size=64 if smoke else 299,
            pretrained=False,
            batch_size=16 if smoke else args.batch_size,
            workers=args.workers,
            cache_dir=Path(folder) / "cache",
        )
        report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
        print(f"frozen backbones, {cells} cells, {args.epochs} epochs", flush=True)
        report["frozen"] = run(
            TrainConfig(out_dir=args.out / "frozen", epochs=args.epochs, **common)
        )
        print(json.dumps(report["frozen"], indent=1), flush=True)
        print("fine-tuned backbones, 1 epoch", flush=True)
        report["finetune"] = run(
            TrainConfig(out_dir=args.out / "finetune", epochs=1, finetune_backbones=True, **common)
        )
        print(json.dumps(report["finetune"], indent=1), flush=True)
        print((args.out / "frozen" / "report.txt").read_text())
    (args.out / "e2e.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
