"""What a bundle says about trusting its calls: temperatures, the default rule, the threshold,
the subjects it was trained and validated on (bundle format 2, docs/bundle-format.md).

`calibrate_ensemble` makes these fields from the validation split at the end of training;
`trust_from_meta` reads them back from bundle.json, checked, into a `TrustSettings` (a bundle
without them, format 1, gives the defaults: no temperatures, rule "max", no threshold, no
subjects, so it predicts exactly as before).

Imports numpy, scipy and the package's model modules only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_allbag.defaults import DEFAULT_TARGET_SENSITIVITY
from napari_allbag.model.calibration import (
    ECE_BINS,
    apply_temperatures,
    expected_calibration_error,
    fit_temperatures,
    sensitivity_threshold,
)
from napari_allbag.model.rules import DEFAULT_RULE, RULES, rule_p_all

#: bundle.json's names of the three models' temperatures, in the ensemble's order.
TEMPERATURE_KEYS = ("model_a", "model_b", "combined")
#: The report's names of the models ECE is given for.
ECE_NAMES = ("model-A", "model-B", "combined", "ensemble")


@dataclass(frozen=True)
class TrustSettings:
    """A bundle's calibration and decision settings (format-1 bundles: the defaults)."""

    temperatures: tuple[float, float, float] | None = None
    rule: str = DEFAULT_RULE
    threshold: dict[str, Any] | None = None  # threshold, sensitivity, specificity, rule, ...
    subjects: dict[str, list[str]] = field(default_factory=dict)  # "train", "val"

    @property
    def known_subjects(self) -> dict[str, str]:
        """{subject: "train" or "val"} for every subject the bundle learnt from or chose on."""
        return {s: split for split in ("train", "val") for s in self.subjects.get(split, [])}


def _ensemble_ece(probs: np.ndarray, labels: np.ndarray, rule: str) -> dict[str, float]:
    values = {
        name: expected_calibration_error(probs[:, i, 1], labels, ECE_BINS)
        for i, name in enumerate(ECE_NAMES[:3])
    }
    values["ensemble"] = expected_calibration_error(rule_p_all(probs, rule), labels, ECE_BINS)
    return values


def calibrate_ensemble(
    probs,
    labels,
    rule: str = DEFAULT_RULE,
    target: float = DEFAULT_TARGET_SENSITIVITY,
    subjects: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """bundle.json's "calibration", "decision" and "subjects" from validation probabilities.

    One temperature per model by NLL (`fit_temperatures`), ECE (15 bins) before and after per
    model and for the ensemble under `rule`, and the sensitivity-first threshold on the calibrated
    ensemble P(ALL) (`sensitivity_threshold`: the highest one keeping sensitivity >= target). No
    threshold where the validation split has no ALL cell.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; choose one of {', '.join(RULES)}")
    temperatures = fit_temperatures(probs, labels)
    calibrated = apply_temperatures(probs, temperatures)
    decision: dict[str, Any] = {"rule": rule, "threshold": None}
    if (labels == 1).any():
        choice = sensitivity_threshold(rule_p_all(calibrated, rule), labels, target)
        decision["threshold"] = {**choice.to_dict(), "rule": rule, "calibrated": True}
    return {
        "calibration": {
            "temperatures": dict(zip(TEMPERATURE_KEYS, map(float, temperatures), strict=True)),
            "fitted_on": "validation",
            "cells": int(len(labels)),
            "ece_bins": ECE_BINS,
            "ece_before": _ensemble_ece(probs, labels, rule),
            "ece_after": _ensemble_ece(calibrated, labels, rule),
        },
        "decision": decision,
        "subjects": {k: sorted(map(str, v)) for k, v in (subjects or {}).items()},
    }


def format_calibration(fragment: dict[str, Any]) -> str:
    """The calibration summary for the training report (temperatures, ECE, the threshold)."""
    calibration, decision = fragment["calibration"], fragment["decision"]
    temps = calibration["temperatures"]
    lines = [
        f"Calibration on {calibration['cells']} validation cells (temperature scaling, "
        f"ECE {calibration['ece_bins']} bins):",
        "  temperatures: " + ", ".join(f"{k} {v:.3f}" for k, v in temps.items()),
    ]
    for name in ECE_NAMES:
        before, after = calibration["ece_before"][name], calibration["ece_after"][name]
        lines.append(f"  ECE {name:<9} {before:.4f} -> {after:.4f}")
    threshold = decision.get("threshold")
    if threshold:
        specificity = threshold["specificity"]
        lines.append(
            f"  threshold (rule {decision['rule']}, target sensitivity "
            f"{threshold['target_sensitivity']:.2f}): P(ALL) >= {threshold['threshold']:.4f}, "
            f"sensitivity {threshold['sensitivity']:.3f}, specificity "
            + ("-" if specificity is None else f"{specificity:.3f}")
        )
    else:
        lines.append("  no threshold: the validation split has no ALL cell")
    return "\n".join(lines)


def _number(value: Any, low: float, high: float, name: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], found {value!r}")
    return float(value)


def _temperatures(calibration: Any) -> tuple[float, float, float] | None:
    if calibration is None:
        return None
    temps = calibration.get("temperatures") if isinstance(calibration, dict) else None
    if not isinstance(temps, dict) or set(temps) != set(TEMPERATURE_KEYS):
        raise ValueError(
            f"calibration.temperatures must map {', '.join(TEMPERATURE_KEYS)} to numbers"
        )
    return tuple(  # type: ignore[return-value]
        _number(temps[k], 1e-3, 1e3, f"calibration.temperatures.{k}") for k in TEMPERATURE_KEYS
    )


def _threshold(decision: dict[str, Any]) -> dict[str, Any] | None:
    threshold = decision.get("threshold")
    if threshold is None:
        return None
    if not isinstance(threshold, dict):
        raise ValueError("decision.threshold must be an object or null")
    _number(threshold.get("threshold"), 0.0, 1.0, "decision.threshold.threshold")
    for key in ("sensitivity", "specificity", "target_sensitivity"):
        if threshold.get(key) is not None:
            _number(threshold[key], 0.0, 1.0, f"decision.threshold.{key}")
    if threshold.get("rule", DEFAULT_RULE) not in RULES:
        raise ValueError(f"decision.threshold.rule must be one of {', '.join(RULES)}")
    return dict(threshold)


def _subjects(subjects: Any) -> dict[str, list[str]]:
    if subjects is None:
        return {}
    if not isinstance(subjects, dict) or not set(subjects) <= {"train", "val"}:
        raise ValueError('subjects must be an object with lists "train" and "val"')
    for split, names in subjects.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"subjects.{split} must be a list of subject names (text)")
    return {split: list(names) for split, names in subjects.items()}


def trust_from_meta(meta: dict[str, Any]) -> TrustSettings:
    """The `TrustSettings` of a bundle.json document; ValueError naming the bad field."""
    decision = meta.get("decision") or {}
    if not isinstance(decision, dict):
        raise ValueError("decision must be an object")
    rule = decision.get("rule", DEFAULT_RULE)
    if rule not in RULES:
        raise ValueError(f"decision.rule must be one of {', '.join(RULES)}, found {rule!r}")
    return TrustSettings(
        temperatures=_temperatures(meta.get("calibration")),
        rule=rule,
        threshold=_threshold(decision),
        subjects=_subjects(meta.get("subjects")),
    )
