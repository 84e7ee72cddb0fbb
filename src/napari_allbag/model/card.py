"""The model card: what a bundle is, what it learnt from, how well, and what it is (not) for.

Training builds the card from what it knows (`build_model_card(meta)`) and stores it in
bundle.json under "model_card"; `napari-allbag info BUNDLE` prints it (`format_model_card`). The
key is optional: for bundles made before cards existed the card is rebuilt from the rest of
bundle.json. This module imports neither torch nor numpy, so printing a card starts fast.
"""

from __future__ import annotations

import json
import platform
import textwrap
from importlib import metadata
from pathlib import Path
from typing import Any

from napari_allbag.model.meta import META_FILE, BundleError, bundle_folder, read_bundle_meta

#: Bumped when the card's layout changes in a way readers must know about.
CARD_VERSION = 1
#: Stored key -> installed distribution, read with importlib.metadata (nothing is imported).
SOFTWARE = (("torch", "torch"), ("timm", "timm"), ("safetensors", "safetensors"))

INTENDED_USE = (
    "Research use: telling leukemic blasts (ALL) from normal white blood cells (HEM) in "
    "stain-normalised single-cell microscopy crops like those of the C-NMC 2019 challenge, with "
    "the Otsu segmentation and crop format stored in the bundle. Not a diagnostic device: no "
    "result may be used for a patient's diagnosis or treatment. Accuracy on images from other "
    "microscopes, stains or labs is unknown until measured (napari-allbag evaluate)."
)
SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: this model learnt synthetic cells drawn by napari_allbag.data.synthetic (the "
    "demo). It shows the pipeline working end to end; it says nothing about real blood cells."
)
CROP_FORMAT = (
    "RGB uint8 crops of crop_size x crop_size pixels: Otsu threshold (on grey for a dark "
    "background, on the stain channel 384 B / (R + G + B) for bright-field), erosion, the cell's "
    "filled convex hull kept, everything else black, the cell centred; resized (bilinear, "
    "antialiased) to the backbone's img_size, scaled to 0..1 and normalised with the backbone's "
    "mean and std."
)


class ModelCardError(BundleError):
    """A model card or bundle.json that cannot be shown; the message names the file and the key."""


def software_versions() -> dict[str, str]:
    """Versions of the software that made a bundle, read without importing torch or timm."""
    from napari_allbag import __version__

    versions = {"napari_allbag": __version__, "python": platform.python_version()}
    for key, distribution in SOFTWARE:
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(value: Any) -> Any:
    """A JSON-able copy (dataclasses with to_dict, paths and numpy scalars made plain)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} cannot go into a model card")


def _validation(metrics: dict[str, Any]) -> dict[str, Any]:
    tables = metrics.get("validation") or {}
    per_model = {
        name: {
            "weighted_f1": table.get("weighted_f1"),
            "accuracy": table.get("accuracy"),
            "per_class": table.get("per_class"),
        }
        for name, table in tables.items()
        if isinstance(table, dict)
    }
    return {
        "cells": metrics.get("validation_cells"),
        "ensemble_weighted_f1": metrics.get("ensemble_weighted_f1"),
        "per_model": per_model,
    }


def _training_data(training: dict[str, Any], synthetic: bool) -> dict[str, Any]:
    subjects = training.get("subjects") or {}
    return {
        "folder": training.get("data_dir"),
        "synthetic": bool(synthetic),
        "cells": training.get("cells") or {},
        "subjects": {
            part: len(ids) if isinstance(ids, list) else ids for part, ids in subjects.items()
        },
        "subject_ids": {part: ids for part, ids in subjects.items() if isinstance(ids, list)},
        "split": training.get("split"),
    }


def build_model_card(meta: dict[str, Any], synthetic: bool | None = None) -> dict[str, Any]:
    """The card of a bundle from its metadata (what `save_bundle` gets, or a stored bundle.json).

    `synthetic` says the training data were generated (the demo); None reads it from
    meta["training"]["synthetic_data"]. Software versions are the stored ones if any, else the
    installed ones.
    """
    backbone = _plain(meta.get("backbone") or {})
    training = _plain(meta.get("training") or {})
    metrics = _plain(meta.get("metrics") or {})
    config = training.get("config") or {}
    if synthetic is None:
        synthetic = bool(training.get("synthetic_data", False))
    calibration = meta.get("calibration") or metrics.get("calibration")
    card = {
        "card_version": CARD_VERSION,
        "model": {
            "method": "Liu & Long 2019 deep bagging ensemble (model-A, model-B, combined model; "
            "the highest of the six class probabilities wins, ties to ALL)",
            "classes": list(meta.get("class_names") or ("hem", "all")),
            "backbone": backbone,
            "pretrained": config.get("pretrained"),
            "finetune_backbones": training.get("finetune_backbones"),
            "decision": _plain(meta.get("decision")) if meta.get("decision") else None,
        },
        "training_data": _training_data(training, synthetic),
        "validation": _validation(metrics),
        "calibration": _plain(calibration) if calibration else None,
        "preprocessing": {
            "segmentation": _plain(meta.get("segmentation") or {}),
            "crop_format": CROP_FORMAT,
            "img_size": backbone.get("img_size"),
            "mean": backbone.get("mean"),
            "std": backbone.get("std"),
        },
        "software": _plain(meta.get("versions") or software_versions()),
        "intended_use": INTENDED_USE,
        "warnings": [SYNTHETIC_WARNING] if synthetic else [],
    }
    return card


# ----------------------------------------------------------------------------- reading


SECTIONS = ("model", "training_data", "validation", "preprocessing", "software")


def validate_model_card(card: Any, where: str) -> dict[str, Any]:
    """`card` if it has the shape `format_model_card` reads; else a ModelCardError naming the key."""
    if not isinstance(card, dict):
        raise ModelCardError(f"{where}: model_card is not a JSON object.")
    version = card.get("card_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelCardError(f"{where}: model_card.card_version is {version!r}, not a version.")
    if version > CARD_VERSION:
        raise ModelCardError(
            f"{where}: the model card was written by a newer napari-allbag (card version "
            f"{version}, this one reads {CARD_VERSION}): upgrade napari-allbag."
        )
    for key in SECTIONS:
        if not isinstance(card.get(key, {}), dict):
            raise ModelCardError(f"{where}: model_card.{key} is not a JSON object.")
    if not isinstance(card.get("intended_use", ""), str):
        raise ModelCardError(f"{where}: model_card.intended_use is not text.")
    warnings = card.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise ModelCardError(f"{where}: model_card.warnings is not a list of texts.")
    return card


def read_model_card(bundle: str | Path) -> tuple[dict[str, Any], bool]:
    """The card of a bundle folder and whether it was stored (False: rebuilt from bundle.json).

    Reads bundle.json through `model.meta.read_bundle_meta` (no torch), which checks every key
    against io.schema; errors are `BundleError`s (`ModelCardError` for the card itself).
    """
    folder = bundle_folder(bundle)
    meta = read_bundle_meta(folder)
    meta_path = folder / META_FILE
    if "model_card" in meta:
        return validate_model_card(meta["model_card"], str(meta_path)), True
    return build_model_card(meta), False


# ----------------------------------------------------------------------------- text


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "?" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _counts(counts: Any) -> str:
    if not isinstance(counts, dict):
        return "?"
    return f"{_number(counts.get('all'))} ALL, {_number(counts.get('hem'))} HEM"


def _section_model(card: dict[str, Any]) -> list[str]:
    model = card.get("model") or {}
    backbone = model.get("backbone") or {}
    pretrained = model.get("pretrained")
    start = {True: "ImageNet weights", False: "random initialisation"}.get(pretrained, "?")
    return [
        "Model",
        _wrapped("method", model.get("method", "?")),
        f"  backbone: {backbone.get('name', '?')} at {_number(backbone.get('img_size'))} px, "
        f"started from {start}",
        f"  classes: {', '.join(map(str, model.get('classes') or ())) or '?'}",
    ]


def _section_data(card: dict[str, Any]) -> list[str]:
    data = card.get("training_data") or {}
    cells = data.get("cells") or {}
    subjects = data.get("subjects") or {}
    lines = ["Training data", f"  folder: {data.get('folder') or '?'}"]
    for part in ("train", "val"):
        if part in cells or part in subjects:
            name = "training" if part == "train" else "validation"
            lines.append(
                f"  {name}: {_counts(cells.get(part))} cells, "
                f"{_number(subjects.get(part))} subjects"
            )
    lines.append(_wrapped("split", data.get("split") or "?"))
    return lines


def _section_validation(card: dict[str, Any]) -> list[str]:
    validation = card.get("validation") or {}
    lines = [
        f"Validation ({_number(validation.get('cells'))} cells)",
        f"  ensemble weighted F1: {_number(validation.get('ensemble_weighted_f1'))}",
    ]
    for name, figures in (validation.get("per_model") or {}).items():
        if isinstance(figures, dict):
            lines.append(
                f"  {name}: weighted F1 {_number(figures.get('weighted_f1'))}, "
                f"accuracy {_number(figures.get('accuracy'))}"
            )
    return lines + _calibration_lines(card.get("calibration"))


def _calibration_lines(calibration: Any) -> list[str]:
    """The calibration in words (temperatures; expected calibration error before -> after), or
    as JSON where it is not in the form training writes (`model.trust`)."""
    if not calibration:
        return ["  calibration: none"]
    try:
        temperatures = ", ".join(
            f"{name} {float(value):.3f}" for name, value in calibration["temperatures"].items()
        )
        before, after = calibration["ece_before"], calibration["ece_after"]
        errors = ", ".join(
            f"{name} {float(before[name]):.4f} -> {float(after[name]):.4f}" for name in before
        )
        fitted = f"{int(calibration['cells'])} {calibration.get('fitted_on', 'validation')} cells"
        bins = calibration.get("ece_bins", "?")
    except (KeyError, TypeError, ValueError, AttributeError):
        return [_wrapped("calibration", json.dumps(calibration))]
    return [
        _wrapped("calibration", f"temperature scaling on {fitted}: {temperatures}"),
        _wrapped(f"expected calibration error ({bins} bins), before -> after", errors),
    ]


def _section_preprocessing(card: dict[str, Any]) -> list[str]:
    pre = card.get("preprocessing") or {}
    segmentation = pre.get("segmentation") or {}
    settings = ", ".join(f"{k}={v}" for k, v in segmentation.items()) or "defaults"
    return [
        "Preprocessing",
        f"  segmentation: {settings}",
        _wrapped("crops", pre.get("crop_format", "?")),
        f"  mean {pre.get('mean', '?')}, std {pre.get('std', '?')}",
    ]


def _wrapped(label: str, text: str) -> str:
    first = f"  {label}: " if label else "  "
    return textwrap.fill(str(text), width=96, initial_indent=first, subsequent_indent="    ")


def format_model_card(card: dict[str, Any]) -> str:
    """The card as readable text (warnings first, so nobody misses them)."""
    lines = ["napari-allbag model card", ""]
    for warning in card.get("warnings") or ():
        lines += [textwrap.fill(f"WARNING: {warning}", width=96, subsequent_indent="  "), ""]
    for section in (_section_model, _section_data, _section_validation, _section_preprocessing):
        lines += section(card) + [""]
    software = card.get("software") or {}
    lines.append("Software: " + (", ".join(f"{k} {v}" for k, v in software.items()) or "?"))
    lines += ["", "Intended use", _wrapped("", card.get("intended_use") or "?")]
    return "\n".join(lines) + "\n"
