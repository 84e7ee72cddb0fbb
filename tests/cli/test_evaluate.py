"""`napari-allbag evaluate` on a generated folder, checked against scikit-learn computed here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import classification_report, confusion_matrix

from napari_allbag.cli.main import main
from napari_allbag.data.synthetic import write_annotated_folder
from napari_allbag.model.bundle import load_bundle
from napari_allbag.segmentation.dark import segment_file
from tests.model_factory import make_tiny_bundle

N_ALL, N_HEM, N_SUBJECTS = 9, 7, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    write_annotated_folder(data, n_all=N_ALL, n_hem=N_HEM, n_subjects=N_SUBJECTS, seed=2, size=128)
    bundle = make_tiny_bundle(root / "bundle", seed=1)
    return root, data, bundle


def _independent_predictions(bundle_path, data):
    """Per-cell truth, subjects and probabilities computed without the evaluate code path."""
    bundle = load_bundle(bundle_path, "cpu")
    files = sorted(p for p in data.rglob("*.bmp"))
    truth, subjects, crops = [], [], []
    for path in files:
        result = segment_file(path, bundle.segmentation)
        crops.append(result.crops[int(np.argmax(result.table["area"]))])
        truth.append(1 if path.parent.name == "all" else 0)
        subjects.append(path.name.split("_")[1])
    with torch.inference_mode():
        probs = bundle.ensemble(torch.from_numpy(np.stack(crops))).numpy()
    return files, np.array(truth), subjects, probs


def test_evaluate_matches_sklearn(setup, capsys):
    root, data, bundle = setup
    out = root / "reports" / "report.json"
    args = ["evaluate", str(bundle), str(data), "--out", str(out), "--device", "cpu"]
    args += ["--cache-dir", str(root / "cache"), "--workers", "1", "--batch-size", "5", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert out.with_suffix(".txt").read_text().strip() in printed

    files, truth, subjects, probs = _independent_predictions(bundle, data)
    assert [cell["file"] for cell in report["cells"]] == [str(p) for p in files]
    assert report["n_cells"] == len(files) == N_ALL + N_HEM
    predictions = {
        "model-A": probs[:, 0].argmax(1),
        "model-B": probs[:, 1].argmax(1),
        "combined": probs[:, 2].argmax(1),
        # The paper's rule: the class of the single highest probability of the three models.
        "ensemble": probs.reshape(len(probs), 6).argmax(1) % 2,
    }
    for name, pred in predictions.items():
        table = report["models"][name]
        expected = classification_report(
            truth,
            pred,
            labels=[0, 1],
            target_names=["hem", "all"],
            output_dict=True,
            zero_division=0,
        )
        for cls in ("hem", "all"):
            for ours, theirs in (
                ("precision", "precision"),
                ("recall", "recall"),
                ("f1", "f1-score"),
            ):
                assert table["per_class"][cls][ours] == pytest.approx(
                    expected[cls][theirs], abs=1e-9
                )
            assert table["per_class"][cls]["support"] == expected[cls]["support"]
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert table["weighted_avg"][ours] == pytest.approx(expected["weighted avg"][theirs])
        assert table["accuracy"] == pytest.approx(expected["accuracy"])
        assert table["confusion_matrix"] == confusion_matrix(truth, pred, labels=[0, 1]).tolist()
        # Accuracy per subject.
        for subject in set(subjects):
            rows = [i for i, s in enumerate(subjects) if s == subject]
            accuracy = float(np.mean(pred[rows] == truth[rows]))
            assert report["per_subject"][name][subject]["accuracy"] == pytest.approx(accuracy)
    assert len(report["per_subject"]["ensemble"]) == 2 * N_SUBJECTS
    # The text shows the four models side by side and the weighted average.
    header = next(line for line in printed.splitlines() if "model-A" in line and "ensemble" in line)
    assert "combined" in header and "model-B" in header
    assert "weighted avg" in printed and "Accuracy per subject" in printed


def test_second_run_reuses_the_cache_and_refuses_to_overwrite(setup, capsys):
    root, data, bundle = setup
    out = root / "second.json"
    common = [str(bundle), str(data), "--device", "cpu", "--cache-dir", str(root / "cache2")]
    assert main(["evaluate", *common, "--out", str(out), "--workers", "1", "--quiet"]) == 0
    first = json.loads(out.read_text())
    capsys.readouterr()
    assert main(["evaluate", *common, "--out", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["evaluate", *common, "--out", str(out), "--overwrite", "--quiet"]) == 0
    second = json.loads(out.read_text())
    assert (
        second["models"] == first["models"]
        and second["context"]["crop_cache"] == first["context"]["crop_cache"]
    )
    assert len(list((root / "cache2").iterdir())) == 1


def test_clear_errors(setup, tmp_path, capsys):
    _, data, bundle = setup
    assert main(["evaluate", str(bundle), str(tmp_path), "--device", "cpu"]) == 2
    assert f"No images found in {tmp_path}" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nobundle"), str(data), "--device", "cpu"]) == 2
    assert "nobundle" in capsys.readouterr().err


def test_evaluate_report_folder_threshold_and_seen_subjects(setup, tmp_path, capsys):
    """A calibrated bundle that learnt from one subject of the folder: loud warning, those
    cells scored apart, the threshold decision, figures and a self-contained report.html."""
    from napari_allbag.model.trust import calibrate_ensemble

    root, data, _ = setup
    files, truth, subjects, probs = _independent_predictions(setup[2], data)
    learnt = sorted(set(subjects))[0]
    fragment = calibrate_ensemble(probs, truth, "mean", 0.9, {"train": [learnt], "val": []})
    bundle = make_tiny_bundle(tmp_path / "calibrated", seed=1, extra_meta=fragment)
    out = tmp_path / "report"
    args = ["evaluate", str(bundle), str(data), "--out", str(out), "--device", "cpu"]
    args += ["--cache-dir", str(root / "cache"), "--workers", "1", "--quiet"]
    assert main([*args, "--rule", "mean", "--decision", "threshold"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.out and learnt in captured.out and "WARNING" in captured.err
    report = json.loads((out / "report.json").read_text())
    seen = report["seen_subjects"]
    assert seen["subjects"] == {learnt: "train"}
    assert seen["seen"]["cells"] == subjects.count(learnt)
    assert seen["seen"]["cells"] + seen["unseen"]["cells"] == report["n_cells"]
    threshold = fragment["decision"]["threshold"]["threshold"]
    for cell in report["cells"]:
        assert cell["ensemble"] == ("all" if cell["p_all_ensemble"] >= threshold else "hem")
    assert report["trust"]["decision"] == "threshold" and report["trust"]["calibrated"]
    for name in ("confusion_matrix", "roc_curve", "reliability", "per_subject"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="http' not in page
    assert learnt in page and (out / "report.txt").is_file()
    assert main([*args, "--rule", "max", "--decision", "threshold", "--overwrite"]) == 2
    assert "--rule mean" in capsys.readouterr().err


def _numbered_test_set(data, folder):
    """C-NMC's preliminary test set as it comes: numbered images and a labels CSV."""
    folder.mkdir()
    rows, sources = ["Patient_ID,new_names,labels"], sorted(data.rglob("*.bmp"))
    for number, path in enumerate(sources, start=1):
        (folder / f"{number}.bmp").write_bytes(path.read_bytes())
        rows.append(f"{path.name},{number}.bmp,{1 if path.parent.name == 'all' else 0}")
    csv_path = folder.parent / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path, sources


def test_labels_csv_reads_the_test_set_as_it_comes(setup, tmp_path, capsys):
    root, data, bundle = setup
    csv_path, sources = _numbered_test_set(data, tmp_path / "C-NMC_test_prelim_phase_data")
    out = tmp_path / "report.json"
    args = ["evaluate", str(bundle), str(tmp_path / "C-NMC_test_prelim_phase_data")]
    args += ["--labels-csv", str(csv_path), "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(args + ["--cache-dir", str(root / "cache"), "--workers", "1"]) == 0
    by_label = json.loads(out.read_text())
    assert by_label["n_cells"] == len(sources) == N_ALL + N_HEM
    # the same classes and subjects as the named folder: the same Table 1
    named = tmp_path / "named.json"
    assert main(["evaluate", str(bundle), str(data), "--out", str(named), "--quiet"]) == 0
    by_folder = json.loads(named.read_text())
    assert by_label["weighted_f1"] == by_folder["weighted_f1"]
    assert sorted(c["subject"] for c in by_label["cells"]) == sorted(
        c["subject"] for c in by_folder["cells"]
    )
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)  # as every other output (umask 022)


def test_labels_csv_with_wrong_columns_says_which(setup, tmp_path, capsys):
    _, data, bundle = setup
    images = tmp_path / "images"
    csv_path, _ = _numbered_test_set(data, images)
    csv_path.write_text(csv_path.read_text().replace("new_names", "names"))
    assert main(["evaluate", str(bundle), str(images), "--labels-csv", str(csv_path)]) == 2
    err = capsys.readouterr().err
    assert "no file column" in err and "new_names" in err


def test_subjects_csv_is_the_option_and_subjects_a_hidden_alias(setup, tmp_path, capsys):
    from napari_allbag.cli.main import build_parser

    _, data, bundle = setup
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "--subjects-csv" in help_text and "--subjects " not in help_text
    old = parser.parse_args(["evaluate", str(bundle), str(data), "--subjects", "s.csv"])
    new = parser.parse_args(["evaluate", str(bundle), str(data), "--subjects-csv", "s.csv"])
    assert old.subjects_csv == new.subjects_csv and str(new.subjects_csv) == "s.csv"


def test_background_option_and_per_image_warnings(setup, tmp_path, capsys):
    root, data, bundle = setup
    common = [str(bundle), str(data), "--device", "cpu", "--workers", "1", "--quiet"]
    assert main(["evaluate", *common, "--cache-dir", str(root / "cache")]) == 0
    printed = capsys.readouterr()
    assert "images: dark background (auto)" in printed.out + printed.err
    code = main(["evaluate", *common, "--cache-dir", str(root / "cache"), "--background", "bright"])
    assert code == 2  # no cell at all: nothing to evaluate
    err = capsys.readouterr().err
    assert "bright-field (set): no white cell found" in err
    assert f"{N_ALL + N_HEM} with no white cell found: see the warnings above" in err


def test_the_report_says_what_the_segmentation_warned_about(setup, tmp_path):
    """A bright-field image whose second white cell has a nucleus of half a red cell: the
    console's warning is in report.txt and report.html too, for whoever reads them later."""
    import cv2

    from tests.segmentation.test_brightfield import draw_white_cell, smear

    _, _, bundle = setup
    data = tmp_path / "set"
    for label, seed in (("all", 6), ("hem", 7)):
        image, _ = smear(seed=seed, keep_clear=[(150, 150, 30), (150, 330, 30)])
        draw_white_cell(image, 150, 150, lobes=((0, 0, 16),))
        draw_white_cell(image, 150, 330, lobes=((0, 0, 10),))
        (data / label).mkdir(parents=True)
        cv2.imwrite(str(data / label / f"{label}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "report"
    args = ["evaluate", str(bundle), str(data), "--out", str(out), "--device", "cpu"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--quiet"]) == 0
    text = (out / "report.txt").read_text()
    assert "  Segmentation: 2 images: bright-field (auto); 2 cells with a small nucleus\n" in text
    assert text.count("nucleus smaller than a red cell") == 2
    page = (out / "report.html").read_text()
    assert "<h2>Segmentation warnings</h2>" in page and "2 cells with a small nucleus" in page
