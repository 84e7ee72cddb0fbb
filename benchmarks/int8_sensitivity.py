"""How much of bench_engines.py's int8 error comes from its random-weight model (issue 14, target 2).

    python benchmarks/int8_sensitivity.py        # inception_resnet_v2 at 299, the C-NMC sample

Builds the benchmark's model exactly as `bench_engines.py` does (random weights, BatchNorm
statistics recomputed on 16 real crops, heads scaled and centred), quantises it with NNCF (int8,
16 calibration cells) and compares the pooled features (1536 per backbone) of int8 and fp32 on
every real cell. It prints, per backbone, the int8 noise divided by the between-cell spread of
the features: along the benchmark head's direction (what its probabilities see), along the five
principal directions of the between-cell variation (where a trained head puts its weight), and
over all features. A ratio of 0.3 along the head means int8 noise is a third of the signal that
separates cells, hence probabilities moving by 0.1 to 0.3; no trained model was available to
measure directly (no pretrained weights offline, CPU training of the backbone too slow).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engines  # noqa: E402
from napari_allbag.inference import engines  # noqa: E402
from napari_allbag.model.networks import build_ensemble, resolve_backbone  # noqa: E402


def with_features(onnx_path: Path):
    """The exported ensemble read by OpenVINO, its two global-pool outputs added."""
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    for op in model.get_ordered_ops():
        if op.get_friendly_name().endswith("GlobalAveragePool"):
            model.add_outputs(op.output(0))
    return model


def pooled_features(model, crops: np.ndarray) -> list[np.ndarray]:
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
    compiled = ov.Core().compile_model(model, "CPU", config)
    outs = [compiled(crops[i : i + 8]) for i in range(0, len(crops), 8)]
    return [np.concatenate([o[k] for o in outs]).reshape(len(crops), -1) for k in (1, 2)]


def ratios(fp32: np.ndarray, int8: np.ndarray, head: torch.nn.Linear) -> dict:
    """int8 noise over between-cell spread: along the head, the top-5 principal axes, overall."""
    weight = head.weight.detach().numpy()
    direction = weight[1] - weight[0]
    noise, centred = int8 - fp32, fp32 - fp32.mean(0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    return {
        "head_direction": float((noise @ direction).std() / (centred @ direction).std()),
        "top5_principal": [float((noise @ a).std() / (centred @ a).std()) for a in axes[:5]],
        "all_features": float(np.linalg.norm(noise) / np.linalg.norm(centred)),
        "top5_variance_fraction": float((singular[:5] ** 2).sum() / (singular**2).sum()),
    }


def main() -> int:
    import nncf

    torch.set_num_threads(2)
    torch.manual_seed(0)
    ensemble = build_ensemble(resolve_backbone("inception_resnet_v2", img_size=299))
    ensemble = ensemble.to(memory_format=torch.channels_last)
    crops = bench_engines.real_crops(299, bench_engines.DATA)
    if crops is None:
        print("the C-NMC sample is absent (../shared/data/cnmc_sample)")
        return 1
    calibration = crops[: bench_engines.CALIBRATION_CELLS]
    bench_engines.make_varied(ensemble, calibration)
    with tempfile.TemporaryDirectory(prefix="int8-sens-") as folder:  # removed after: a large graph
        onnx_path = engines.export_onnx(ensemble, 299, Path(folder))
        fp32 = pooled_features(with_features(onnx_path), crops)
        dataset = nncf.Dataset([calibration[i : i + 4] for i in range(0, len(calibration), 4)])
        quantised = nncf.quantize(with_features(onnx_path), dataset, subset_size=len(calibration))
        int8 = pooled_features(quantised, crops)
    heads = (ensemble.model_a.head, ensemble.model_b.head)
    for name, f, q, head in zip("AB", fp32, int8, heads, strict=True):
        print(json.dumps({"backbone": name, **ratios(f, q, head)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
