"""Inference engines for the ensemble: PyTorch always, OpenVINO and ONNX Runtime on the CPU.

`make_engine(name, ensemble, device, batch_size)` returns an `Engine`: `run(crops)` takes uint8
crops (N, S, S, 3) and returns probabilities (N, 3, 2) float32, the same as `Ensemble.forward`.
The optional engines run one ONNX graph of the whole ensemble (preprocessing, both backbones, the
three heads, softmax), exported once and cached on disk keyed by a hash of the weights: beside the
bundle (`<bundle>/.engines/`) or, where that folder is read-only, in the user cache folder.

`auto` picks the fastest installed engine on the CPU (the order of `AUTO_ORDER`, measured with
`benchmarks/bench_engines.py`, figures in docs/benchmarks.md) and PyTorch on a GPU. ONNX Runtime
comes with `pip install "napari-allbag[fast-cpu]"`, OpenVINO with `[openvino]`; without either
`auto` is PyTorch. All of these run fp32 and give torch's labels. `openvino-bf16` is the one
approximate engine, never picked by `auto`: OpenVINO in bf16 on a CPU with AMX or AVX512_BF16,
7.6x eager torch on 2 AMX cores but probabilities moved by up to 0.09 and 3 of 62 labels changed
on the benchmark's model (docs/benchmarks.md): for users who check it on their own annotated
cells first (`evaluate --engine openvino-bf16`).

Imports torch and numpy only; onnxruntime / openvino load when their engine is made.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from napari_allbag.io.atomic import write_bytes_atomic
from napari_allbag.model.networks import CLASS_NAMES, MODEL_NAMES

#: Names a user may give (`predict --engine`).
ENGINES = ("auto", "torch", "onnxruntime", "openvino", "openvino-bf16")
#: Engines whose probabilities differ from torch's by more than rounding (never `auto`).
APPROXIMATE = ("openvino-bf16",)
#: What `auto` tries on the CPU, fastest first (fp32, the same labels as torch; ONNX Runtime
#: 1.57x and OpenVINO 1.51x eager torch on 2 cores); PyTorch when neither is installed.
AUTO_ORDER = ("onnxruntime", "openvino")
#: The Python module each optional engine needs (the ONNX export needs `onnx` too).
ENGINE_MODULES = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "openvino-bf16": "openvino",
}
#: The pyproject extra that installs each optional engine.
ENGINE_EXTRAS = {"onnxruntime": "fast-cpu", "openvino": "openvino", "openvino-bf16": "openvino"}
#: Folder of cached exports, inside the bundle folder or the user cache folder.
EXPORT_FOLDER = ".engines"
#: Bumped when the exported graph changes, so older cached exports are not reused.
EXPORT_VERSION = 1
ONNX_OPSET = 18


class EngineError(ValueError):
    """An engine name that is unknown, not installed or unusable on the chosen device."""


class Engine(Protocol):
    """What `make_engine` returns; `submit` / `host_batch` let the streaming loop use it."""

    name: str
    batch_size: int
    description: str

    def run(self, crops: np.ndarray) -> np.ndarray: ...

    def host_batch(self, crops: np.ndarray) -> Any: ...

    def submit(self, batch: Any) -> Any: ...


def engine_installed(name: str) -> bool:
    """True when the engine's Python package can be imported (torch always can)."""
    if name == "torch":
        return True
    try:
        importlib.import_module(ENGINE_MODULES[name])
        importlib.import_module("onnx")
    except ImportError:
        return False
    return True


def installed_engines() -> list[str]:
    """The engines that can run here, torch first."""
    return ["torch", *(name for name in ENGINE_MODULES if engine_installed(name))]


def resolve_engine(name: str | None, device: str | torch.device = "cpu") -> str:
    """The concrete engine for `name` on `device`: `auto` (or None) becomes the fastest installed.

    Raises `EngineError` for an unknown name, a missing package (saying what to install) or an
    optional engine on a GPU (they run on the CPU only).
    """
    text = "auto" if name is None else str(name).strip().lower()
    if text not in ENGINES:
        raise EngineError(f"Unknown engine {name!r}: use one of {', '.join(ENGINES)}.")
    cpu = torch.device(device).type == "cpu"
    if text == "auto":
        return next((n for n in AUTO_ORDER if cpu and engine_installed(n)), "torch")
    if text == "torch":
        return text
    if not cpu:
        raise EngineError(
            f"The {text} engine runs on the CPU only; use --engine torch (or auto) on {device}, "
            "or --device cpu."
        )
    if not engine_installed(text):
        raise EngineError(
            f"The {text} engine is not installed (it needs {ENGINE_MODULES[text]!r} and 'onnx'): "
            f'pip install "napari-allbag[{ENGINE_EXTRAS[text]}]", or use --engine torch.'
        )
    return text


# ----------------------------------------------------------------------------- ONNX export


def weights_key(module: nn.Module, crop_size: int) -> str:
    """A hex digest of every tensor (name, shape, dtype, values), the crop size and the versions."""
    digest = hashlib.sha256(f"v{EXPORT_VERSION} torch {torch.__version__} {crop_size}".encode())
    for key, tensor in module.state_dict().items():
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key} {tuple(value.shape)} {value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def export_folder(bundle_dir: str | Path | None = None) -> Path:
    """`<bundle>/.engines` when that can be written, else `<user cache>/engines`."""
    if bundle_dir is not None and _writable(Path(bundle_dir) / EXPORT_FOLDER):
        return Path(bundle_dir) / EXPORT_FOLDER
    from napari_allbag.segmentation.crop_cache import default_cache_dir

    return default_cache_dir() / "engines"


def _onnx_bytes(ensemble: nn.Module, example: torch.Tensor) -> bytes:
    """The ensemble as ONNX (opset 18, dynamic batch), from uint8 NHWC crops to probabilities."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings, nothing to act on
        torch.onnx.export(
            ensemble,
            (example,),
            buffer,
            dynamo=False,
            input_names=["crops"],
            output_names=["probs"],
            dynamic_axes={"crops": {0: "batch"}, "probs": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    return buffer.getvalue()


def export_onnx(ensemble: nn.Module, crop_size: int, folder: str | Path) -> Path:
    """The cached ONNX export of `ensemble` for crops of `crop_size`; exported (atomically) if new."""
    key = weights_key(ensemble, crop_size)
    path = Path(folder) / f"ensemble-{key[:20]}-{crop_size}px.onnx"
    if path.is_file():
        return path
    source = next(ensemble.parameters(), torch.empty(0))
    cpu_model = ensemble if source.device.type == "cpu" else _cpu_copy(ensemble)
    example = torch.zeros((2, crop_size, crop_size, 3), dtype=torch.uint8)
    was_training = cpu_model.training
    cpu_model.eval()
    try:
        data = _onnx_bytes(cpu_model, example)
    finally:
        cpu_model.train(was_training)
    try:
        write_bytes_atomic(path, data)
    except OSError as error:  # a read-only or full cache folder must not stop the run
        return _uncached_export(data, path, error)
    return path


def _uncached_export(data: bytes, path: Path, error: OSError) -> Path:
    """Write the export where this run alone uses it (removed at exit), and say it is not cached."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="allbag-engine-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    warnings.warn(
        f"could not cache the ONNX export in {path.parent} ({error.strerror or error}); "
        "this run uses a temporary copy and the next one exports again",
        RuntimeWarning,
        stacklevel=3,
    )
    temporary = folder / path.name
    temporary.write_bytes(data)
    return temporary


def _cpu_copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).to("cpu")


# ----------------------------------------------------------------------------- engines


class _Ready:
    """A result computed at once (CPU engines); mirrors the torch runner's pending batch."""

    def __init__(self, probs: np.ndarray):
        self.probs = probs

    def result(self) -> np.ndarray:
        return self.probs


class _GraphEngine:
    """An engine over an exported ONNX graph: `_infer(uint8 batch) -> probs` does the work."""

    name = ""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], batch_size: int, detail: str):
        self._infer = infer
        self.batch_size = int(batch_size)
        self.description = f"CPU ({detail})"
        self.crop_size: int | None = None  # the exported graph's fixed crop side

    def host_batch(self, crops: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(crops, dtype=np.uint8)

    def submit(self, batch: Any) -> _Ready:
        array = batch.numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        return _Ready(self._probs(self.host_batch(array)))

    def _probs(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"crops must be (N, S, S, 3) RGB, got shape {batch.shape}")
        if self.crop_size is not None and batch.shape[1:3] != (self.crop_size,) * 2:
            raise EngineError(
                f"the {self.name} engine was exported for {self.crop_size} px crops, got "
                f"{batch.shape[1]} x {batch.shape[2]}; use --engine torch for mixed sizes"
            )
        probs = np.asarray(self._infer(batch), dtype=np.float32)
        return probs.reshape(batch.shape[0], len(MODEL_NAMES), len(CLASS_NAMES))

    def run(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        out = np.empty((crops.shape[0], len(MODEL_NAMES), len(CLASS_NAMES)), np.float32)
        for first in range(0, crops.shape[0], self.batch_size):
            batch = self.host_batch(crops[first : first + self.batch_size])
            out[first : first + batch.shape[0]] = self._probs(batch)
        return out


def _threads() -> int:
    return max(1, torch.get_num_threads())


def onnxruntime_engine(path: Path, batch_size: int) -> _GraphEngine:
    """ONNX Runtime on the CPU, all graph optimisations, torch's thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    engine = _GraphEngine(
        lambda batch: session.run(None, {input_name: batch})[0],
        batch_size,
        f"ONNX Runtime {ort.__version__}, {_threads()} threads",
    )
    engine.name = "onnxruntime"
    return engine


def cpu_has_bf16(core: Any) -> bool:
    """Whether OpenVINO would run bf16 on this CPU (AMX or AVX512_BF16), not f32 quietly."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_engine(path: Path, batch_size: int, precision: str = "f32") -> _GraphEngine:
    """OpenVINO on the CPU at `precision` ("f32", or "bf16": `EngineError` where the CPU has
    no bf16 instructions, on which OpenVINO would quietly run f32)."""
    import openvino as ov

    core = ov.Core()
    if precision == "bf16" and not cpu_has_bf16(core):
        raise EngineError(
            "The openvino-bf16 engine needs a CPU with bf16 instructions (Intel AMX or "
            "AVX512_BF16; AMD Zen 4 and later) and this one has none: use --engine openvino "
            "(fp32, the same labels as torch) or auto."
        )
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": _threads(),
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    engine = _GraphEngine(
        lambda batch: compiled(batch)[0],
        batch_size,
        f"OpenVINO {ov.__version__.split('-')[0]} {precision}, {_threads()} threads",
    )
    engine.name = "openvino" if precision == "f32" else f"openvino-{precision}"
    return engine


@dataclass
class _Holder:
    """The two attributes `EnsembleRunner` reads from a bundle."""

    ensemble: nn.Module
    device: torch.device


class TorchEngine:
    """PyTorch eager (the `EnsembleRunner`: inference_mode, channels_last, autocast on a GPU)."""

    name = "torch"

    def __init__(self, ensemble: nn.Module, device: torch.device, batch_size: int | None, **kw):
        from napari_allbag.inference.classify import EnsembleRunner

        current = next(ensemble.parameters(), torch.empty(0)).device
        self.runner = EnsembleRunner(_Holder(ensemble, current), device, batch_size, **kw)
        self.batch_size = self.runner.batch_size
        self.description = self.runner.description

    def host_batch(self, crops: np.ndarray) -> torch.Tensor:
        return self.runner.host_batch(crops)

    def submit(self, batch: torch.Tensor) -> Any:
        return self.runner.submit(batch)

    def run(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        out = np.empty((crops.shape[0], len(MODEL_NAMES), len(CLASS_NAMES)), np.float32)
        for first in range(0, crops.shape[0], self.batch_size):
            batch = self.host_batch(crops[first : first + self.batch_size])
            out[first : first + batch.shape[0]] = self.runner.run(batch)
        return out


def make_engine(
    name: str | None,
    ensemble: nn.Module,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    crop_size: int | None = None,
    bundle_dir: str | Path | None = None,
    compile: bool = False,
) -> Engine:
    """An engine running `ensemble` on `device` (see the module docstring).

    `crop_size` is the side of the crops it will get (default: the backbone's input size);
    `bundle_dir` the folder beside which the ONNX export is cached. `compile` is torch's only.
    """
    from napari_allbag.model.devices import default_batch_size

    device = torch.device(device)
    chosen = resolve_engine(name, device)
    size = int(crop_size or ensemble.preprocess.img_size)
    if chosen != "torch" and size != ensemble.preprocess.img_size:
        if name not in (None, "auto"):  # the exported graph has no antialiased resize
            raise EngineError(
                f"The {chosen} engine needs crops of the backbone's size "
                f"({ensemble.preprocess.img_size} px), not {size} px: use --engine torch."
            )
        chosen = "torch"
    if chosen == "torch":
        return TorchEngine(ensemble, device, batch_size, compile=compile)
    batch = int(batch_size or default_batch_size(device))
    if batch < 1:
        raise EngineError(f"batch size must be at least 1, got {batch_size}")
    path = export_onnx(ensemble, size, export_folder(bundle_dir))
    if chosen == "onnxruntime":
        engine = onnxruntime_engine(path, batch)
    else:
        engine = openvino_engine(path, batch, "bf16" if chosen == "openvino-bf16" else "f32")
    engine.crop_size = size
    return engine


def engine_runner(
    bundle: Any,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    compile: bool = False,
    engine: str | None = "torch",
    crop_size: int | None = None,
) -> Any:
    """An `EnsembleRunner` for the torch engine, else an `Engine` (the same submit interface).

    `crop_size` is the side of the crops to come (default: the bundle's); `compile` with `auto`
    means torch, with an optional engine it is refused.
    """
    from napari_allbag.inference.classify import EnsembleRunner

    target = torch.device(device) if device is not None else torch.device(bundle.device)
    name = "torch" if compile and engine in (None, "auto") else resolve_engine(engine, target)
    if name == "torch":
        return EnsembleRunner(bundle, device, batch_size, compile)
    if compile:
        raise EngineError(f"compile applies to the torch engine only, not to {name}")
    size = crop_size or bundle.crop_size
    return make_engine(engine, bundle.ensemble, target, batch_size, size, bundle.path)
