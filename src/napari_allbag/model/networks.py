"""timm backbones, the stage-1 models, the paper's combined model and the fast ensemble.

Liu & Long (2019), Fig. 3: two backbones (model-A, model-B) are trained on bagging subsets A and
B; the "combined" model feeds both pooled feature vectors through their own BatchNorm, concatenates
them, then FC 1024 + ReLU + dropout 0.6, twice, then FC 2 (softmax). The final label is the class
with the single highest probability among the three models.

`Ensemble` computes each backbone once per cell and feeds its features both to its own head and to
the combined head: two backbone passes per cell instead of four.

This module imports only torch, timm and numpy (no OpenCV, scikit-image, napari or Qt), so
`benchmarks/gpu_bench.py` can load it on a machine that has only torch and timm.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.model import triton_loader  # noqa: F401 - must precede timm: see that module

# isort: split
import timm
import torch
import torch.nn.functional as F
from torch import nn

from napari_allbag.defaults import CLASS_NAMES, DEFAULT_BACKBONE
from napari_allbag.io.schema import MAX_IMG_SIZE, MIN_IMG_SIZE

#: Order of the three models in `Ensemble` outputs.
MODEL_NAMES = ("model_a", "model_b", "combined")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownBackboneError(ValueError):
    """A backbone name timm does not know; `suggestions` holds close matches."""

    def __init__(self, name: str, suggestions: Sequence[str] = ()):
        self.name = name
        self.suggestions = list(suggestions)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(
            f"Unknown backbone {name!r}: timm has no model of that name.{hint} "
            "Any name from timm.list_models() works (the paper uses 'inception_resnet_v2')."
        )


class BackboneWeightsError(ValueError):
    """Backbone weights that cannot be obtained or do not fit the architecture."""


@dataclass(frozen=True)
class BackboneConfig:
    """What a backbone needs from its input: square size and per-channel mean/std (0..1 scale)."""

    name: str
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "img_size": self.img_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        return cls(
            name=str(data["name"]),
            img_size=int(data["img_size"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )


def _check_known(name: str) -> None:
    if not isinstance(name, str) or not name or not timm.is_model(name):
        close = difflib.get_close_matches(str(name).lower(), timm.list_models(), n=5, cutoff=0.6)
        raise UnknownBackboneError(str(name), close)


def resolve_backbone(
    name: str = DEFAULT_BACKBONE,
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BackboneConfig:
    """The input size, mean and std of a timm backbone from its pretrained config, unless given."""
    _check_known(name)
    cfg: Any = None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - some timm names have no registered pretrained config
        cfg = None
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    input_size = cfg_dict.get("input_size") or (3, 224, 224)
    size = int(img_size) if img_size is not None else int(input_size[-1])
    if not MIN_IMG_SIZE <= size <= MAX_IMG_SIZE:  # the bounds a bundle may hold (io/schema.py)
        raise ValueError(f"img_size must be {MIN_IMG_SIZE} to {MAX_IMG_SIZE} pixels, got {size}")
    mean_t = tuple(
        float(v) for v in (mean if mean is not None else cfg_dict.get("mean") or IMAGENET_MEAN)
    )
    std_t = tuple(
        float(v) for v in (std if std is not None else cfg_dict.get("std") or IMAGENET_STD)
    )
    if len(mean_t) != 3 or len(std_t) != 3 or min(std_t) <= 0:
        raise ValueError(f"mean and std need three values (std > 0), got {mean_t} and {std_t}")
    return BackboneConfig(name=name, img_size=size, mean=mean_t, std=std_t)


# ----------------------------------------------------------------------------- weights files


def _is_pickle_or_zip(path: Path) -> bool:
    """True when the file starts like a pickle or a zip archive (what torch.save writes).

    Only the first bytes are looked at: a valid safetensors file starts with its header length.
    """
    with open(path, "rb") as handle:
        head = handle.read(4)
    pickled = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return pickled or head == b"PK\x03\x04"


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local `.safetensors` weights file.

    Pickle-based files (`.pth`, `.pt`, `.bin`) are refused, never opened: unpickling a file can
    run code. The message says how to convert one the user trusts.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"Weights file not found: {path}. Check the path.")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt", ".bin", ".pkl", ".ckpt"):
        raise BackboneWeightsError(
            f"{path} is a pickle-based PyTorch file; napari-allbag never unpickles files it is "
            "given. Use the model's .safetensors weights (timm publishes them), or convert a file "
            'you trust yourself: python -c "import torch, safetensors.torch as st; '
            f"st.save_file(torch.load('{path.name}', weights_only=True), "
            f"'{path.stem}.safetensors')\""
        )
    if suffix != ".safetensors":
        raise BackboneWeightsError(f"Unsupported weights file {path}: use a .safetensors file.")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if _is_pickle_or_zip(path):
        raise BackboneWeightsError(
            f"{path} is named .safetensors but holds a pickle/zip archive; it was not opened. "
            "Convert it with safetensors.torch.save_file."
        )
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise BackboneWeightsError(f"{path} is not a valid safetensors file: {error}") from error


def load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into a pooled timm backbone, strictly for the backbone's own tensors.

    Classifier tensors in the file (the backbone was created with num_classes=0) are ignored, as is a
    leading `module.` or `backbone.` prefix. Any missing tensor or shape mismatch raises a
    `BackboneWeightsError` that names the tensor, the expected and the found shape.
    """
    expected = backbone.state_dict()
    for prefix in ("module.", "backbone."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    missing = [key for key in expected if key not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise BackboneWeightsError(
            f"{source} does not fit backbone: {len(missing)} tensor(s) missing ({shown}). "
            "Use weights made for this exact timm architecture."
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise BackboneWeightsError(
                f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, the backbone "
                f"expects {tuple(tensor.shape)}. Use weights made for this exact timm architecture."
            )
    backbone.load_state_dict({key: state[key] for key in expected}, strict=True)


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
) -> nn.Module:
    """A timm backbone with global average pooling and no classifier (`.num_features` wide).

    `weights_path` replaces the ImageNet download (offline machines); with it nothing is downloaded.
    """
    _check_known(name)
    download = bool(pretrained) and weights_path is None
    try:
        backbone = timm.create_model(name, pretrained=download, num_classes=0)
    except Exception as error:  # noqa: BLE001 - network / hub failures surface in many types
        if not download:
            raise
        raise BackboneWeightsError(
            f"Could not get the ImageNet weights of {name!r} ({type(error).__name__}: {error}). "
            "Offline? Pass a local weights file (--weights FILE.safetensors), or train from random "
            "weights (--no-pretrained; Pretrained unticked in the Train widget)."
        ) from error
    if weights_path is not None:
        load_backbone_weights(backbone, read_weights_file(weights_path), str(weights_path))
    return backbone


# ----------------------------------------------------------------------------- models


class Stage1Model(nn.Module):
    """Model-A / model-B: backbone, global average pooling, a 2-class linear head.

    `forward_features` returns the *pooled* feature vector (B, F) (the backbone was built with
    num_classes=0); `forward_head` maps it to logits (B, 2); `forward` does both.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = len(CLASS_NAMES)):
        super().__init__()
        self.backbone = backbone
        self.num_features = int(backbone.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CombinedHead(nn.Module):
    """The paper's combined head: BatchNorm each feature vector, concat, 2 x (FC+ReLU+dropout), FC 2.

    Returns logits; softmax is applied at inference (and inside the loss during training).
    """

    def __init__(
        self,
        features_a: int,
        features_b: int,
        hidden: int = 1024,
        dropout: float = 0.6,
        num_classes: int = len(CLASS_NAMES),
    ):
        super().__init__()
        self.features_a = int(features_a)
        self.features_b = int(features_b)
        self.bn_a = nn.BatchNorm1d(self.features_a)
        self.bn_b = nn.BatchNorm1d(self.features_b)
        self.mlp = nn.Sequential(
            nn.Linear(self.features_a + self.features_b, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.bn_a(features_a), self.bn_b(features_b)], dim=1))


class CombinedModel(nn.Module):
    """Model-A's and model-B's backbones as feature extractors feeding a `CombinedHead`.

    With `freeze_backbones=True` the backbones get no gradients and stay in eval mode (BatchNorm
    statistics untouched) even when the model is put in training mode: stage 2 then trains the head
    only, and the ensemble can share the backbones with the stage-1 models.
    """

    def __init__(
        self,
        model_a: Stage1Model,
        model_b: Stage1Model,
        head: CombinedHead,
        freeze_backbones: bool = False,
    ):
        super().__init__()
        self.model_a = model_a
        self.model_b = model_b
        self.head = head
        self.freeze_backbones = bool(freeze_backbones)
        if self.freeze_backbones:
            for parameter in (*model_a.backbone.parameters(), *model_b.backbone.parameters()):
                parameter.requires_grad_(False)
            model_a.backbone.eval()
            model_b.backbone.eval()

    def train(self, mode: bool = True) -> CombinedModel:
        super().train(mode)
        if self.freeze_backbones:
            self.model_a.backbone.eval()
            self.model_b.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model_a.forward_features(x), self.model_b.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features_a, features_b = self.forward_features(x)
        return self.head(features_a, features_b)


class Preprocess(nn.Module):
    """uint8 NHWC crops -> normalised float NCHW at the backbone's size, channels_last.

    Runs on the device, so crops travel as uint8 (4x less transfer than float). Accepts NHWC or NCHW
    (NCHW when dim 1 has 3 channels and the last dim does not); uint8 is scaled by 1/255, floating
    input is taken as already in 0..1. Crops of another size are resized (bilinear, antialiased).
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.img_size = int(config.img_size)
        self.register_buffer(
            "mean",
            torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (B, H, W, 3), got shape {tuple(x.shape)}")
        if not (x.shape[1] == 3 and x.shape[-1] != 3):
            x = x.permute(0, 3, 1, 2)
        if x.dtype == torch.uint8:
            x = x.float().mul_(1.0 / 255.0)
        else:
            x = x.float()
        if x.shape[-2] != self.img_size or x.shape[-1] != self.img_size:
            x = F.interpolate(
                x,
                size=(self.img_size, self.img_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


class Ensemble(nn.Module):
    """Model-A, model-B and the combined model in one pass: uint8 crops -> probs (B, 3, 2).

    The third argument is the `CombinedHead` (features shared: two backbone passes per cell), or a
    `CombinedModel`: when its stage-1 models are model-A and model-B themselves the features are
    shared too; when it has its own (end-to-end fine-tuned) backbones they run as well (four passes).
    Output order along dim 1: model-A, model-B, combined; along dim 2: CLASS_NAMES.
    """

    def __init__(
        self,
        model_a: Stage1Model,
        model_b: Stage1Model,
        head: CombinedHead | CombinedModel,
        preprocess: Preprocess,
    ):
        super().__init__()
        self.model_a = model_a
        self.model_b = model_b
        self.preprocess = preprocess
        self.combined_backbones: CombinedModel | None = None
        if isinstance(head, CombinedModel):
            if head.model_a is model_a and head.model_b is model_b:
                self.head = head.head
            else:
                self.head = head.head
                self.combined_backbones = head
        else:
            self.head = head

    @property
    def backbone_passes(self) -> int:
        """Backbone passes per cell: 2 with shared features, 4 with the combined model's own."""
        return 2 if self.combined_backbones is None else 4

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 3, 2) from raw crops (uint8 NHWC)."""
        pixels = self.preprocess(x)
        features_a = self.model_a.forward_features(pixels)
        features_b = self.model_b.forward_features(pixels)
        if self.combined_backbones is None:
            combined = self.head(features_a, features_b)
        else:
            combined = self.head(*self.combined_backbones.forward_features(pixels))
        return torch.stack(
            [
                self.model_a.forward_head(features_a),
                self.model_b.forward_head(features_b),
                combined,
            ],
            dim=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, 3, 2), float32, from raw crops (uint8 NHWC)."""
        return self.forward_logits(x).float().softmax(dim=-1)

    def combined_model(self) -> CombinedModel:
        """The combined model as a stand-alone module (shares this ensemble's weights)."""
        if self.combined_backbones is not None:
            return self.combined_backbones
        return CombinedModel(self.model_a, self.model_b, self.head)


def decide(probs: torch.Tensor | np.ndarray) -> tuple[Any, Any]:
    """The paper's rule: the single highest class probability among the three models wins.

    `probs` is (B, 3, 2) (or (3, 2) for one cell). Returns `(labels, confidence)`: labels are class
    indices (1 = ALL), confidence the winning probability; numpy in, numpy out; torch in, torch out.
    An exact tie between the highest ALL and the highest HEM probability goes to ALL, as in the
    paper's authors' code (a missed blast costs more than a second look); before bundle format 2
    the first of the six in (A, B, combined) x (hem, all) order won, which sent a tie within one
    model to HEM. `model.rules.decide_rule(probs, "max")` gives the same labels.
    """
    single = probs.ndim == 2
    if single:
        probs = probs[None]
    if probs.ndim != 3 or probs.shape[-1] != len(CLASS_NAMES):
        raise ValueError(
            f"expected probabilities of shape (B, models, 2), got {tuple(probs.shape)}"
        )
    hem, all_ = CLASS_NAMES.index("hem"), CLASS_NAMES.index("all")
    if isinstance(probs, torch.Tensor):
        best_all = probs[:, :, all_].amax(dim=1) if probs.shape[0] else probs.new_zeros(0)
        best_hem = probs[:, :, hem].amax(dim=1) if probs.shape[0] else probs.new_zeros(0)
        is_all = best_all >= best_hem
        labels = torch.where(is_all, all_, hem).to(torch.long)
        confidence = torch.where(is_all, best_all, best_hem)
    else:
        probs = np.asarray(probs)
        best_all = probs[:, :, all_].max(axis=1, initial=-np.inf)
        best_hem = probs[:, :, hem].max(axis=1, initial=-np.inf)
        is_all = best_all >= best_hem
        labels = np.where(is_all, all_, hem).astype(np.int64)
        confidence = np.where(is_all, best_all, best_hem).astype(probs.dtype, copy=False)
    if single:
        return labels[0], confidence[0]
    return labels, confidence


def build_ensemble(
    config: BackboneConfig,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
) -> Ensemble:
    """A fresh ensemble (two backbones, their heads, a combined head) for `config`, in eval mode."""
    model_a = Stage1Model(create_backbone(config.name, pretrained, weights_path))
    model_b = Stage1Model(create_backbone(config.name, pretrained, weights_path))
    head = CombinedHead(model_a.num_features, model_b.num_features)
    return Ensemble(model_a, model_b, head, Preprocess(config)).eval()
