"""What a run leaves besides the report and the curves: the bundle's metadata (with the
calibration fitted on the validation split)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_allbag.model.card import build_model_card
from napari_allbag.model.networks import BackboneConfig
from napari_allbag.model.trust import calibrate_ensemble
from napari_allbag.training.prepare import PreparedData, class_counts, segmentation_params


def calibration_fields(config, data: PreparedData, probs: np.ndarray) -> dict[str, Any]:
    """bundle.json's calibration, decision and subjects from the validation probabilities:
    temperatures by NLL, ECE before/after, the threshold keeping `config.target_sensitivity`."""
    subjects = {
        split: sorted({str(data.subjects[i]) for i in rows if data.subjects[i] is not None})
        for split, rows in (("train", data.train), ("val", data.val))
    }
    labels = data.labels[data.val]
    return calibrate_ensemble(probs, labels, config.rule, config.target_sensitivity, subjects)


def parent_record(bundle_dir) -> dict[str, Any]:
    """What a fine-tuned bundle records of the bundle it started from."""
    from napari_allbag.model.bundle import read_bundle_meta

    parent = read_bundle_meta(bundle_dir)
    return {
        "path": str(Path(bundle_dir).resolve()),
        "created": parent.get("created"),
        "backbone": (parent.get("backbone") or {}).get("name"),
        "ensemble_weighted_f1": (parent.get("metrics") or {}).get("ensemble_weighted_f1"),
    }


def bundle_meta(
    config, backbone: BackboneConfig, data: PreparedData, outcomes, report, trust=None
) -> dict[str, Any]:
    """bundle.json's content; `trust` (calibration, decision, subjects) joins it and the card."""
    training = {
        "config": json.loads(json.dumps(config.to_dict())),
        "data_dir": str(config.data_dir),
        "cells": {
            "train": class_counts(data.labels[data.train]),
            "val": class_counts(data.labels[data.val]),
        },
        "split": data.split_note,
        "subjects": {
            part: sorted({str(data.subjects[i]) for i in rows if data.subjects[i] is not None})
            for part, rows in (("train", data.train), ("val", data.val))
        },
        "synthetic_data": bool(config.synthetic_data),
        "stages": {
            name: {
                "epochs": outcome.extra.get("last_epoch"),
                "best_epoch": outcome.best_epoch,
                "best_val_loss": outcome.best_val_loss,
                "stopped_early": outcome.stopped_early,
            }
            for name, outcome in outcomes.items()
        },
        "finetune_backbones": config.finetune_backbones,
        "processes": config.world_size,
    }
    metrics = {
        "ensemble_weighted_f1": report["weighted_f1"]["ensemble"],
        "validation_cells": report["n_cells"],
        "validation": {
            name: {
                "weighted_f1": table["weighted_avg"]["f1"],
                "accuracy": table["accuracy"],
                "per_class": table["per_class"],
                "confusion_matrix": table["confusion_matrix"],
            }
            for name, table in report["models"].items()
        },
    }
    # Training keeps the largest cell of each (one-cell) C-NMC image; a bundle classifies every
    # cell an image holds, so it carries the same crop settings without that restriction.
    meta = {
        "backbone": backbone,
        "segmentation": replace(segmentation_params(config), largest_only=False),
        "training": training,
        "metrics": metrics,
        **(trust or {}),
    }
    if getattr(config, "init_from", None) is not None:
        meta["parent"] = parent_record(config.init_from)
    meta["model_card"] = build_model_card(meta)
    return meta
