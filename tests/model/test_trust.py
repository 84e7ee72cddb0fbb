"""model.trust: calibration at the end of training, stored in the bundle, read back (format 1 too)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_allbag.model.bundle import BundleError, load_bundle, read_bundle_meta
from napari_allbag.model.rules import rule_p_all
from napari_allbag.model.trust import (
    TrustSettings,
    calibrate_ensemble,
    format_calibration,
    trust_from_meta,
)
from tests.model_factory import make_tiny_bundle


def overconfident_probs(n=600, seed=0):
    """Three models whose true P(ALL) is a logistic of a score, reporting it 4x too sharp."""
    rng = np.random.default_rng(seed)
    score = rng.normal(0, 1.5, size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(np.int64)
    noise = rng.normal(0, 0.3, size=(n, 3))
    p_all = 1 / (1 + np.exp(-4 * (score[:, None] + noise)))
    return np.stack([1 - p_all, p_all], axis=-1), labels


def test_overconfident_models_get_hotter_temperatures_and_a_lower_ece():
    probs, labels = overconfident_probs()
    fragment = calibrate_ensemble(probs, labels, "max", 0.95, {"train": ["b", "a"], "val": ["c"]})
    calibration = fragment["calibration"]
    assert all(t > 2 for t in calibration["temperatures"].values())
    for name in ("model-A", "model-B", "combined", "ensemble"):
        assert calibration["ece_after"][name] < calibration["ece_before"][name] / 2
    assert fragment["subjects"] == {"train": ["a", "b"], "val": ["c"]}
    text = format_calibration(fragment)
    assert "ECE ensemble" in text and "P(ALL) >=" in text


@pytest.mark.parametrize("target", [0.8, 0.95, 0.99])
def test_the_threshold_reaches_the_target_on_the_split_it_was_chosen_on(target):
    probs, labels = overconfident_probs(seed=1)
    fragment = calibrate_ensemble(probs, labels, "mean", target)
    threshold = fragment["decision"]["threshold"]
    temps = tuple(fragment["calibration"]["temperatures"].values())
    from napari_allbag.model.calibration import apply_temperatures

    p_all = rule_p_all(apply_temperatures(probs, temps), "mean")
    called = p_all >= threshold["threshold"]
    sensitivity = called[labels == 1].mean()
    assert sensitivity >= target and sensitivity == pytest.approx(threshold["sensitivity"])
    assert (~called[labels == 0]).mean() == pytest.approx(threshold["specificity"])
    # a hair higher either loses the target or calls no fewer HEM cells ALL
    higher = p_all >= threshold["threshold"] + 1e-9
    assert (
        higher[labels == 1].mean() < target
        or (~higher[labels == 0]).mean() == (~called[labels == 0]).mean()
    )


def test_no_all_cell_means_no_threshold():
    probs, labels = overconfident_probs(n=50)
    fragment = calibrate_ensemble(probs, np.zeros_like(labels))
    assert fragment["decision"] == {"rule": "max", "threshold": None}
    assert "no threshold" in format_calibration(fragment)


def test_a_calibrated_bundle_round_trips_and_a_format_1_bundle_predicts_as_before(tmp_path):
    probs, labels = overconfident_probs(n=200)
    fragment = calibrate_ensemble(probs, labels, "agree", 0.9, {"train": ["1"], "val": ["2"]})
    calibrated = load_bundle(make_tiny_bundle(tmp_path / "new", seed=3, extra_meta=fragment))
    assert calibrated.meta["format_version"] == 2
    trust = calibrated.trust
    assert trust.rule == "agree" and trust.known_subjects == {"1": "train", "2": "val"}
    assert trust.temperatures == pytest.approx(
        tuple(fragment["calibration"]["temperatures"].values())
    )
    assert trust.threshold["threshold"] == fragment["decision"]["threshold"]["threshold"]

    old_path = make_tiny_bundle(tmp_path / "old", seed=3)
    meta_file = old_path / "bundle.json"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 1
    meta_file.write_text(json.dumps(meta))
    old = load_bundle(old_path)
    assert old.trust == TrustSettings()
    crops = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(old.ensemble(crops), calibrated.ensemble(crops))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"decision": {"rule": "vote"}}, "decision.rule"),
        ({"calibration": {"temperatures": {"model_a": 1.0}}}, "calibration.temperatures"),
        (
            {"calibration": {"temperatures": {"model_a": -1, "model_b": 1, "combined": 1}}},
            "calibration.temperatures.model_a",
        ),
        ({"decision": {"threshold": {"threshold": "0.3"}}}, "decision.threshold.threshold"),
        ({"subjects": {"train": [1, 2]}}, "subjects.train"),
    ],
)
def test_damaged_trust_fields_are_refused_by_name(tmp_path, change, field):
    path = make_tiny_bundle(tmp_path / "b", seed=1)
    meta = json.loads((path / "bundle.json").read_text())
    meta.update(change)
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=field.replace(".", r"\.")):
        read_bundle_meta(path)
    with pytest.raises(ValueError):
        trust_from_meta(meta)
