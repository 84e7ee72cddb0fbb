"""evaluation.evaluate: the report of a bundle on an annotated folder, and its text form."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from napari_allbag.data.annotations import scan_annotated_folder
from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.evaluation.evaluate import evaluate_folder
from napari_allbag.evaluation.report import build_report, format_report
from napari_allbag.inference.pipeline import PipelineOptions, classify_files_cached
from napari_allbag.model.bundle import load_bundle
from napari_allbag.model.networks import decide
from napari_allbag.progress import drive
from tests.model_factory import make_tiny_bundle


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_annotated_folder(root / "data", n_all=3, n_hem=3, n_subjects=2, seed=4, size=128)
    black = root / "data" / "all" / "UID_9_1_1_all.bmp"
    cv2.imwrite(str(black), np.zeros((64, 64, 3), np.uint8))
    bundle = load_bundle(make_tiny_bundle(root / "bundle", seed=2), "cpu")
    annotated = scan_annotated_folder(root / "data", require_both_classes=False)
    options = PipelineOptions(batch_size=4, workers=1)
    report = drive(evaluate_folder(bundle, annotated, options, root / "cache"))
    return bundle, annotated, options, root, report, black


def test_the_report_scores_every_cell_through_the_pipeline(evaluated):
    bundle, annotated, options, root, report, black = evaluated
    found = drive(classify_files_cached(bundle, annotated.paths, options, root / "cache"))
    rows = found.rows
    assert report["n_cells"] == len(rows) == len(annotated.paths) - 1
    assert [cell["file"] for cell in report["cells"]] == [str(annotated.paths[i]) for i in rows]
    assert [s["file"] for s in report["context"]["skipped"]] == [str(black)]
    labels, _ = decide(found.predictions.probs[rows])
    assert [cell["ensemble"] for cell in report["cells"]] == [("hem", "all")[i] for i in labels]
    p_all = np.array([cell["p_all"] for cell in report["cells"]])
    assert np.allclose(p_all, found.predictions.p_all[rows], atol=1e-5)
    truth = [cell["label"] for cell in report["cells"]]
    assert truth == [annotated.items[i].label for i in rows]
    assert [cell["subject"] for cell in report["cells"]] == [
        annotated.items[i].subject for i in rows
    ]
    assert report["context"]["segmentation"] == found.params.to_dict()
    assert report["context"]["device"] == "cpu"
    subjects = {annotated.items[i].subject for i in rows}
    assert report["kind"] == "evaluation" and set(report["per_subject"]["ensemble"]) == subjects


def test_the_text_lists_counts_and_left_out_files(evaluated):
    *_, report, black = evaluated
    text = format_report(report)
    assert f"{report['n_cells']} cells evaluated" in text
    assert "1 image(s) left out" in text and str(black) in text
    assert "weighted avg" in text
    context = {**report["context"], "skipped": [], "notes": []}
    empty = build_report("evaluation", [], np.zeros((0, 3, 2)), context=context)
    assert "0 cells evaluated" in format_report(empty) and "left out" not in format_report(empty)
