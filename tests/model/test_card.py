"""The model card: built from bundle metadata, stored in bundle.json, printed by `napari-allbag info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_allbag.cli.main import main
from napari_allbag.model.bundle import load_bundle, save_bundle
from napari_allbag.model.card import (
    SYNTHETIC_WARNING,
    build_model_card,
    format_model_card,
    read_model_card,
)
from napari_allbag.model.meta import BundleError
from tests.model_factory import make_tiny_models, tiny_segmentation_params

SRC = Path(__file__).resolve().parents[2] / "src"


def _meta(synthetic: bool = False, card: bool = True) -> dict:
    """Metadata shaped like train_outputs.bundle_meta makes it (figures made up for the test)."""
    _, _, _, config = make_tiny_models()
    meta = {
        "backbone": config,
        "segmentation": tiny_segmentation_params(),
        "training": {
            "config": {"pretrained": False, "epochs": 3},
            "data_dir": "/data/C-NMC_training_data",
            "cells": {"train": {"all": 70, "hem": 31}, "val": {"all": 29, "hem": 13}},
            "split": "7:3 by subject",
            "subjects": {"train": ["1", "2", "H1"], "val": ["3", "H2"]},
            "synthetic_data": synthetic,
        },
        "metrics": {
            "ensemble_weighted_f1": 0.8125,
            "validation_cells": 42,
            "validation": {
                "model_a": {"weighted_f1": 0.75, "accuracy": 0.7619},
                "ensemble": {"weighted_f1": 0.8125, "accuracy": 0.8333},
            },
        },
    }
    if card:
        meta["model_card"] = build_model_card(meta)
    return meta


def _bundle(path: Path, meta: dict) -> Path:
    model_a, model_b, head, _ = make_tiny_models()
    return save_bundle(path, model_a, model_b, head, meta)


def test_card_holds_what_training_knows():
    card = build_model_card(_meta(card=False))
    assert card["training_data"]["cells"]["val"] == {"all": 29, "hem": 13}
    assert card["training_data"]["subjects"] == {"train": 3, "val": 2}
    assert card["validation"]["ensemble_weighted_f1"] == 0.8125
    assert card["model"]["backbone"]["name"] == "test_resnet"
    assert card["preprocessing"]["segmentation"]["crop_size"] == 64
    assert {"python", "torch", "timm", "napari_allbag"} <= set(card["software"])
    assert card["warnings"] == [] and card["calibration"] is None
    json.dumps(card)  # JSON-able as it goes into bundle.json


def test_text_names_figures_and_warns_for_synthetic_data():
    text = format_model_card(build_model_card(_meta(synthetic=True, card=False)))
    assert text.index("WARNING") < text.index("Training data")
    assert SYNTHETIC_WARNING.split(":")[0] in text
    for expected in (
        "29 ALL, 13 HEM cells, 2 subjects",
        "ensemble weighted F1: 0.812",
        "test_resnet",
    ):
        assert expected in text, expected
    assert "WARNING" not in format_model_card(build_model_card(_meta(card=False)))


def test_calibration_reads_in_words_and_an_unknown_form_as_json():
    from napari_allbag.model.trust import ECE_NAMES

    calibration = {
        "temperatures": {"model_a": 1.25, "model_b": 0.9, "combined": 1.0},
        "fitted_on": "validation",
        "cells": 42,
        "ece_bins": 15,
        "ece_before": dict.fromkeys(ECE_NAMES, 0.0712),
        "ece_after": dict.fromkeys(ECE_NAMES, 0.0301),
    }
    card = build_model_card(_meta(card=False))
    text = format_model_card({**card, "calibration": calibration})
    assert "temperature scaling on 42 validation cells: model_a 1.250, model_b 0.900" in text
    assert "(15 bins), before -> after: model-A 0.0712 -> 0.0301" in text
    assert "{" not in text.split("calibration:")[1].split("Preprocessing")[0]
    odd = format_model_card({**card, "calibration": {"temperatures": [1.2]}})  # hand-edited
    assert 'calibration: {"temperatures": [1.2]}' in odd


def test_card_travels_in_the_bundle_and_old_bundles_still_load(tmp_path):
    stored = _bundle(tmp_path / "new", _meta(synthetic=True))
    card, was_stored = read_model_card(stored)
    assert was_stored and card["warnings"] == [SYNTHETIC_WARNING]
    assert load_bundle(stored).meta["model_card"] == card

    old = _bundle(tmp_path / "old", _meta(card=False))
    assert "model_card" not in json.loads((old / "bundle.json").read_text())
    card, was_stored = read_model_card(old)
    assert not was_stored and card["validation"]["cells"] == 42
    assert card["software"]["torch"] == load_bundle(old).meta["versions"]["torch"]


def test_info_prints_the_card_without_importing_torch(tmp_path):
    bundle = _bundle(tmp_path / "b", _meta())
    code = (
        "import sys; from napari_allbag.cli.main import main; rc = main(['info', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "napari-allbag model card" in done.stdout and "Intended use" in done.stdout


def test_info_json_and_rebuilt_note(tmp_path, capsys):
    old = _bundle(tmp_path / "old", _meta(card=False))
    assert main(["info", str(old), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["card_version"] == 1
    assert main(["info", str(old)]) == 0
    assert "predates model cards" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(model_card=[]), "not a JSON object"),
        (lambda m: m["model_card"].update(card_version=99), "newer napari-allbag"),
        (lambda m: m["model_card"].update(warnings="careful"), "warnings"),
        (lambda m: m["model_card"].update(validation=3), "model_card.validation"),
        (lambda m: m.update(training=[1]), "training is a list"),  # io.schema, as load_bundle
    ],
)
def test_damaged_cards_are_refused_by_key(tmp_path, capsys, change, message):
    bundle = _bundle(tmp_path / "b", _meta())
    meta = json.loads((bundle / "bundle.json").read_text())
    change(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message):
        read_model_card(bundle)
    assert main(["info", str(bundle)]) == 2
    assert message in capsys.readouterr().err


def test_info_on_a_folder_that_is_no_bundle(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "bundle.json is missing" in capsys.readouterr().err
