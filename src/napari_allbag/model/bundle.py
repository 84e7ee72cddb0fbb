"""The model bundle: one folder holding the trained ensemble as safetensors plus `bundle.json`.

    my_bundle/
        bundle.json            format version, backbone (name, img_size, mean, std, num_features),
                               class names, segmentation parameters, training summary and metrics,
                               package versions, combined_has_own_backbones
        model_a.safetensors    Stage1Model state (backbone.*, head.*)
        model_b.safetensors    Stage1Model state
        combined.safetensors   CombinedHead state (head.*); plus model_a.* / model_b.* when the
                               combined model was fine-tuned end to end and has its own backbones

Saving is atomic: everything is written into a hidden sibling folder, flushed to disk, then moved
into place with one rename, so a crash never leaves a half-written bundle that loads. Loading never
unpickles anything and says exactly what does not match.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import struct
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from napari_allbag import __version__
from napari_allbag.io.atomic import OutputError, replace_atomic
from napari_allbag.io.schema import check_finite_tensors
from napari_allbag.model.meta import (  # noqa: F401  (FORMAT_VERSION, read_bundle_meta: re-exported)
    FORMAT_VERSION,
    META_FILE,
    BundleError,
    bundle_folder,
    read_bundle_meta,
)
from napari_allbag.model.networks import (
    CLASS_NAMES,
    BackboneConfig,
    CombinedHead,
    CombinedModel,
    Ensemble,
    Preprocess,
    Stage1Model,
    UnknownBackboneError,
    create_backbone,
    resolve_backbone,
)
from napari_allbag.model.trust import TrustSettings, trust_from_meta

MODEL_A_FILE = "model_a.safetensors"
MODEL_B_FILE = "model_b.safetensors"
COMBINED_FILE = "combined.safetensors"
WEIGHT_FILES = (MODEL_A_FILE, MODEL_B_FILE, COMBINED_FILE)
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


@dataclass
class LoadedBundle:
    """A bundle ready to run: the ensemble on its device, eval mode, plus what bundle.json says."""

    ensemble: Ensemble
    meta: dict[str, Any]
    backbone: BackboneConfig
    segmentation: Any  # segmentation.SegmentationParams (a dict if that module is unavailable)
    path: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta.get("class_names", CLASS_NAMES))

    @property
    def trust(self) -> TrustSettings:
        """Temperatures, default rule, threshold and subjects (format 1: the defaults)."""
        return trust_from_meta(self.meta)

    @property
    def crop_size(self) -> int:
        """The crop size the segmentation makes (the ensemble resizes to the backbone's size)."""
        if isinstance(self.segmentation, dict):
            return int(self.segmentation.get("crop_size", self.backbone.img_size))
        return int(getattr(self.segmentation, "crop_size", self.backbone.img_size))


# ----------------------------------------------------------------------------- saving


def package_versions() -> dict[str, str]:
    """Versions that made a bundle, stored for the record."""
    import timm

    versions = {
        "napari_allbag": __version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    try:
        import safetensors

        versions["safetensors"] = safetensors.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return versions


def _as_dict(value: Any) -> Any:
    if value is None or isinstance(value, dict):
        return value
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise BundleError(f"cannot store {type(value).__name__} in bundle.json: give a dict")


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    if first is second:
        return True
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k].cpu(), b[k].cpu()) for k in a
    )


def _tensors(module_state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory, and the copy is detached from training
    return {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in module_state.items()}


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=meta)
    _fsync(path)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # Windows cannot open folders; nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_bundle(
    out_dir: str | Path,
    model_a: Stage1Model,
    model_b: Stage1Model,
    head: CombinedHead | CombinedModel,
    meta: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a bundle folder atomically and return its path.

    `head` is the trained `CombinedHead`, or the `CombinedModel`; when that model's backbones differ
    from model-A's and model-B's (fine-tuned end to end) they are stored too. `meta` needs "backbone"
    (a `BackboneConfig` or its dict) and may hold "segmentation" (`SegmentationParams` or dict),
    "training" and "metrics" (free dicts) and any further JSON-able keys. An existing bundle at
    `out_dir` is replaced only with `overwrite=True`; a folder that is not a bundle never is.
    """
    out_dir = Path(out_dir)
    if "backbone" not in meta:
        raise BundleError("save_bundle needs meta['backbone'] (the BackboneConfig of the models)")
    backbone_dict = _backbone_record(meta["backbone"], model_a, model_b)
    _check_target(out_dir, overwrite)
    own_backbones, combined_head, combined_state = _combined_weights(head, model_a, model_b)
    text = _bundle_json(meta, backbone_dict, combined_head, own_backbones)
    _write_bundle_folder(out_dir, overwrite, (model_a, model_b, combined_state), text)
    return out_dir


def _backbone_record(backbone: Any, model_a: Stage1Model, model_b: Stage1Model) -> dict[str, Any]:
    """The backbone config as a dict, with the feature widths the heads were built for."""
    backbone_dict = dict(_as_dict(backbone))
    backbone_dict["num_features"] = int(model_a.num_features)
    if model_b.num_features != model_a.num_features:
        backbone_dict["num_features_b"] = int(model_b.num_features)
    return backbone_dict


def _combined_weights(
    head: CombinedHead | CombinedModel, model_a: Stage1Model, model_b: Stage1Model
) -> tuple[bool, CombinedHead, dict[str, Any]]:
    """Whether the combined model has its own backbones, its head, and the tensors to store."""
    own_backbones = isinstance(head, CombinedModel) and not (
        _same_weights(head.model_a.backbone, model_a.backbone)
        and _same_weights(head.model_b.backbone, model_b.backbone)
    )
    combined_head = head.head if isinstance(head, CombinedModel) else head
    if own_backbones:
        combined_state = _tensors(head.state_dict())
    else:
        combined_state = _tensors(combined_head.state_dict(), "head.")
    return own_backbones, combined_head, combined_state


def _bundle_json(
    meta: dict[str, Any],
    backbone_dict: dict[str, Any],
    combined_head: CombinedHead,
    own_backbones: bool,
) -> str:
    """The bundle.json text, validated (JSON-able, trust section readable)."""
    hidden = int(combined_head.mlp[0].out_features)
    dropout = float(combined_head.mlp[2].p)
    document = {
        key: _as_dict(value)
        for key, value in meta.items()
        if key not in ("backbone", "segmentation", "training", "metrics")
    }
    document.update(
        {
            "format_version": FORMAT_VERSION,
            "kind": "napari-allbag model bundle",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "backbone": backbone_dict,
            "class_names": list(CLASS_NAMES),
            "combined_head": {"hidden": hidden, "dropout": dropout},
            "combined_has_own_backbones": bool(own_backbones),
            "segmentation": _as_dict(meta.get("segmentation")) or {},
            "training": _as_dict(meta.get("training")) or {},
            "metrics": _as_dict(meta.get("metrics")) or {},
            "versions": package_versions(),
        }
    )
    try:
        text = json.dumps(document, indent=2, default=_json_default)
        trust_from_meta(json.loads(text))
    except (TypeError, ValueError) as error:
        raise BundleError(f"bundle metadata is not JSON-able or invalid: {error}") from error
    return text


def _write_bundle_folder(
    out_dir: Path,
    overwrite: bool,
    weights: tuple[Stage1Model, Stage1Model, dict[str, Any]],
    text: str,
) -> None:
    """Write the files into a temporary sibling folder, then move it into place."""
    model_a, model_b, combined_state = weights
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        file_meta = {"format": "pt", "napari_allbag_format": str(FORMAT_VERSION)}
        _write_safetensors(_tensors(model_a.state_dict()), temp / MODEL_A_FILE, file_meta)
        _write_safetensors(_tensors(model_b.state_dict()), temp / MODEL_B_FILE, file_meta)
        _write_safetensors(combined_state, temp / COMBINED_FILE, file_meta)
        with open(temp / META_FILE, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _match_permissions(temp)
        _fsync(temp)
        _move_into_place(temp, out_dir, overwrite)
    except OSError as error:  # disk full, read-only: one message, no partial folder left
        shutil.rmtree(temp, ignore_errors=True)
        raise OutputError(out_dir, error) from error
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _fsync(out_dir.parent)


def _match_permissions(temp: Path) -> None:
    """safetensors writes owner-only files; give them the same permissions as bundle.json."""
    mode = stat.S_IMODE((temp / META_FILE).stat().st_mode)
    for name in WEIGHT_FILES:
        os.chmod(temp / name, mode)
    os.chmod(temp, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if mode & 0o044 else 0o700)


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise BundleError(f"{out_dir} exists and is a file: choose a folder name for the bundle.")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / META_FILE).is_file():
        raise BundleError(
            f"{out_dir} is a folder that holds other files, not a model bundle: it will not be "
            "replaced. Choose a new or empty folder for the bundle."
        )
    if not overwrite:
        raise BundleError(
            f"A bundle already exists at {out_dir}. Choose another folder, or overwrite it "
            "(overwrite=True / --overwrite)."
        )


def _move_into_place(temp: Path, out_dir: Path, overwrite: bool) -> None:
    _check_target(out_dir, overwrite)
    if not out_dir.exists():
        replace_atomic(temp, out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        replace_atomic(temp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    replace_atomic(out_dir, old)
    try:
        replace_atomic(temp, out_dir)
    except BaseException:
        replace_atomic(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- loading


def _looks_like_pickle(path: Path) -> bool:
    """True when the file starts like a pickle or a zip (torch.save) archive; nothing is loaded."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    return head == b"PK\x03\x04"


def _read_weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of one bundle file, refusing pickles without opening them."""
    path = folder / name
    if not path.is_file():
        stem = Path(name).stem
        pickles = sorted(
            p.name for p in folder.glob(f"{stem}.*") if p.suffix.lower() in PICKLE_SUFFIXES
        )
        if pickles:
            raise BundleError(
                f"{folder}: {name} is missing and {pickles[0]} is there instead, a pickle file. "
                "napari-allbag never unpickles model files (they can run code). Re-save the weights "
                "with safetensors (safetensors.torch.save_file) as " + name + "."
            )
        raise BundleError(
            f"{folder}: {name} is missing. The bundle is incomplete: copy the whole bundle folder "
            "again or re-run training."
        )
    if _looks_like_pickle(path):
        raise BundleError(
            f"{path} is a pickle/zip (torch.save) file named .safetensors; it was not opened, "
            "because unpickling can run code. Re-save the weights with safetensors.torch.save_file."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with open(path, "rb") as handle:
        prefix = handle.read(9)
    header_ok = len(prefix) == 9 and prefix[8:9] == b"{"
    if header_ok:
        header_len = struct.unpack("<Q", prefix[:8])[0]
        header_ok = 0 < header_len < path.stat().st_size
    if not header_ok:
        raise BundleError(
            f"{path} is not a safetensors file (damaged or truncated). Copy the bundle again."
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{path} cannot be read ({error}). Copy the bundle again.") from error
    check_finite_tensors(tensors, path, error=BundleError)
    return tensors


def _check_state(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], file: Path, what: str
) -> None:
    """Raise a BundleError naming the first tensors that are missing, extra or of another shape."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"unexpected {_names(extra)}")
        raise BundleError(
            f"{file}: tensor names do not match {what} ({'; '.join(parts)}). The file belongs to "
            "another model or bundle.json names the wrong backbone."
        )
    for key, tensor in expected.items():
        if tuple(found[key].shape) != tuple(tensor.shape):
            raise BundleError(
                f"{file}: tensor {key!r} has shape {tuple(found[key].shape)}, {what} expects "
                f"{tuple(tensor.shape)}. The file belongs to another model or bundle.json names "
                "the wrong backbone or image size."
            )


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:4])
    return shown + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _load_module(module: torch.nn.Module, state: dict[str, torch.Tensor], file: Path, what: str):
    _check_state(module.state_dict(), state, file, what)
    module.load_state_dict(state, strict=True)


def _segmentation_params(meta: dict[str, Any], meta_path: Path) -> Any:
    values = meta.get("segmentation") or {}
    try:
        from napari_allbag.segmentation.dark import SegmentationParams
    except ImportError:  # pragma: no cover - segmentation is part of the package
        return dict(values)
    try:
        return SegmentationParams.from_dict(values) if values else SegmentationParams()
    except (TypeError, ValueError, KeyError) as error:
        raise BundleError(
            f"{meta_path}: the segmentation parameters cannot be used ({error}). The bundle may "
            "come from a newer napari-allbag: upgrade it."
        ) from error


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> LoadedBundle:
    """Load a bundle folder onto `device`, checked file by file; returns a ready `LoadedBundle`."""
    folder = bundle_folder(path)
    meta = read_bundle_meta(folder)
    meta_path = folder / META_FILE
    info = meta["backbone"]
    try:
        config = resolve_backbone(
            info["name"], img_size=info.get("img_size"), mean=info.get("mean"), std=info.get("std")
        )
    except UnknownBackboneError as error:
        raise BundleError(
            f"{meta_path}: {error} The installed timm ({_timm_version()}) may be older than the one "
            "that trained the bundle: upgrade timm."
        ) from error
    except (TypeError, ValueError) as error:
        raise BundleError(f"{meta_path}: the backbone settings are invalid ({error}).") from error

    states = {name: _read_weights(folder, name) for name in WEIGHT_FILES}
    own_backbones = bool(meta.get("combined_has_own_backbones", False))

    def stage1(file: str, what: str) -> Stage1Model:
        model = Stage1Model(create_backbone(config.name, pretrained=False))
        _load_module(model, states[file], folder / file, what)
        return model

    what = f"a {config.name!r} stage-1 model"
    model_a = stage1(MODEL_A_FILE, what)
    model_b = stage1(MODEL_B_FILE, what)
    head_info = meta.get("combined_head") or {}
    head = CombinedHead(
        model_a.num_features,
        model_b.num_features,
        hidden=int(head_info.get("hidden", 1024)),
        dropout=float(head_info.get("dropout", 0.6)),
    )
    combined_file = folder / COMBINED_FILE
    if own_backbones:
        combined: CombinedHead | CombinedModel = CombinedModel(
            Stage1Model(create_backbone(config.name, pretrained=False)),
            Stage1Model(create_backbone(config.name, pretrained=False)),
            head,
        )
        _load_module(
            combined, states[COMBINED_FILE], combined_file, "a combined model with own backbones"
        )
    else:
        head_state = {
            k[len("head.") :] if k.startswith("head.") else k: v
            for k, v in states[COMBINED_FILE].items()
        }
        if any(k.startswith(("model_a.", "model_b.")) for k in head_state):
            raise BundleError(
                f"{combined_file} holds backbones but {meta_path} says "
                "combined_has_own_backbones is false. The bundle is inconsistent: save it again."
            )
        _load_module(head, head_state, combined_file, "the combined head")
        combined = head
    states.clear()  # free the CPU copies early

    device = torch.device(device)
    ensemble = Ensemble(model_a, model_b, combined, Preprocess(config)).eval()
    ensemble = ensemble.to(device=device, memory_format=torch.channels_last)
    return LoadedBundle(
        ensemble=ensemble,
        meta=meta,
        backbone=config,
        segmentation=_segmentation_params(meta, meta_path),
        path=folder,
        device=device,
    )


def _timm_version() -> str:
    import timm

    return timm.__version__
