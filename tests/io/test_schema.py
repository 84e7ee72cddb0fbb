"""Bounded bundle.json and checkpoint JSON: what the code writes passes, every tampering is refused
with a message naming the file, the field, the allowed range and the fix, before any allocation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_allbag.io.schema import (
    BUNDLE_SCHEMA,
    SchemaError,
    UnsafePathError,
    limits,
    safe_child,
    validate_bundle_meta,
    validate_checkpoint,
    validate_stage_state,
)
from napari_allbag.model import bundle as bundle_module
from napari_allbag.model.bundle import BundleError, load_bundle, read_bundle_meta
from napari_allbag.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_to_flat,
    prefixed,
    save_checkpoint,
)
from napari_allbag.training.schedule import PlateauSchedule
from tests.model_factory import make_tiny_bundle

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bundle-format.md"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", seed=1)


@pytest.fixture
def editable(saved, tmp_path):
    """A copy of the tiny bundle whose bundle.json a test may edit."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in saved.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    return copy


def _edit(folder: Path, dotted: str, value) -> None:
    meta_path = folder / "bundle.json"
    meta = json.loads(meta_path.read_text())
    *parents, last = dotted.split(".")
    node = meta
    for key in parents:
        node = node[key]
    node[last] = value
    meta_path.write_text(json.dumps(meta))


def test_bundles_the_code_writes_validate(saved, tmp_path):
    own = make_tiny_bundle(tmp_path / "own", seed=2, own_backbones=True)
    for folder in (saved, own):
        meta = json.loads((folder / "bundle.json").read_text())
        assert validate_bundle_meta(meta, folder / "bundle.json") is meta
        load_bundle(folder)


BAD_BUNDLE_FIELDS = [
    ("backbone.img_size", 20000, "from 8 to 1024"),
    ("backbone.img_size", 1000000, "from 8 to 1024"),
    ("backbone.img_size", "64", "from 8 to 1024"),
    ("backbone.img_size", 64.7, "from 8 to 1024"),
    ("backbone.img_size", 64.0, "from 8 to 1024"),
    ("backbone.img_size", True, "from 8 to 1024"),
    ("combined_head.hidden", 10000000, "from 1 to 16384"),
    ("combined_head.hidden", -1, "from 1 to 16384"),
    ("combined_head.dropout", 5, "[0, 1)"),
    ("combined_head.dropout", 1.0, "[0, 1)"),
    ("backbone.mean", [0.5, 0.5], "3 numbers"),
    ("backbone.std", [0.2, 0.0, 0.2], "3 numbers"),
    ("backbone.name", "../../etc/passwd", "timm model name"),
    ("backbone.name", "hf-hub:timm/resnet18", "timm model name"),
    ("segmentation.crop_size", 100000, "from 8 to 2048"),
    ("segmentation.largest_only", "no", "true or false"),
    ("combined_has_own_backbones", "yes", "true or false"),
    ("class_names", 5, "a list"),
]


@pytest.mark.parametrize(("field", "value", "allowed"), BAD_BUNDLE_FIELDS)
def test_tampered_bundle_fields_are_refused_before_anything_is_built(
    editable, monkeypatch, field, value, allowed
):
    _edit(editable, field, value)

    def must_not_run(*args, **kwargs):
        raise AssertionError("weights or modules were touched before bundle.json was checked")

    monkeypatch.setattr(bundle_module, "_read_weights", must_not_run)
    monkeypatch.setattr(bundle_module, "create_backbone", must_not_run)
    with pytest.raises(BundleError) as caught:
        load_bundle(editable)
    message = str(caught.value)
    assert str(editable / "bundle.json") in message
    assert field.split(".")[-1] in message and allowed in message
    assert "edited or is damaged" in message  # the fix
    with pytest.raises(BundleError):
        read_bundle_meta(editable)  # the widget's description refuses it too


def test_nan_in_bundle_json_is_refused(editable):
    text = (editable / "bundle.json").read_text()
    meta = json.loads(text)
    meta["backbone"]["mean"] = [math.nan, 0.4, 0.4]
    (editable / "bundle.json").write_text(json.dumps(meta))  # json writes the NaN literal
    with pytest.raises(BundleError, match=r"backbone\.mean\[0\] is nan"):
        read_bundle_meta(editable)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_are_refused_at_load(editable, bad):
    path = editable / "model_b.safetensors"
    tensors = {k: v.clone() for k, v in load_file(path).items()}
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name].view(-1)[1] = bad
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(BundleError, match=r"NaN or infinite") as caught:
        load_bundle(editable)
    assert str(path) in str(caught.value) and repr(name) in str(caught.value)


def test_negative_batchnorm_variance_is_refused_at_load(editable):
    path = editable / "model_a.safetensors"
    tensors = {k: v.clone() for k, v in load_file(path).items()}
    name = next(k for k in tensors if k.endswith("running_var"))
    tensors[name][0] = -1.0
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(BundleError, match="negative variances"):
        load_bundle(editable)


def test_every_limit_is_in_the_docs_table():
    text = DOCS.read_text(encoding="utf-8")
    for field, allowed in limits(BUNDLE_SCHEMA):
        assert re.search(rf"\| `{re.escape(field)}` \| {re.escape(allowed)} \|", text), field


# ----------------------------------------------------------------------------- checkpoints


def _real_stage_state(finished: bool = False):
    """Tensors and state as train_loop._save writes them (a real optimizer after two steps)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    schedule = PlateauSchedule(lr=1e-3)
    for epoch in (1, 2):
        optimizer.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        schedule.step(epoch, 1.0 / epoch)
    tensors = prefixed("best", model.state_dict())
    state = {
        "epoch": 2,
        "finished": finished,
        "schedule": schedule.to_dict(),
        "history": [{"epoch": 1, "loss": 0.5, "val_loss": math.nan}, {"epoch": 2}],
        "seed": 0,
    }
    if not finished:
        tensors.update(prefixed("model", model.state_dict()))
        optimizer_tensors, optimizer_state = optimizer_to_flat(optimizer)
        tensors.update(optimizer_tensors)
        state["optimizer"] = optimizer_state
        state["scaler"] = None
    return tensors, state


@pytest.mark.parametrize("finished", [False, True])
def test_checkpoints_the_code_writes_validate(tmp_path, finished):
    tensors, state = _real_stage_state(finished)
    json_path = save_checkpoint(tmp_path, "stage1-A", tensors, state)
    loaded, read_state = load_checkpoint(tmp_path, "stage1-A")
    assert loaded.keys() == tensors.keys()
    assert validate_stage_state(read_state, json_path) is read_state


def _tamper_checkpoint(folder: Path, change) -> Path:
    tensors, state = _real_stage_state()
    json_path = save_checkpoint(folder, "stage", tensors, state)
    document = json.loads(json_path.read_text())
    change(document)
    json_path.write_text(json.dumps(document))
    return json_path


@pytest.mark.parametrize(
    "tensors_name",
    ["../../../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors", "..\\x.safetensors"],
)
def test_checkpoint_tensor_paths_never_leave_the_folder(tmp_path, monkeypatch, tensors_name):
    json_path = _tamper_checkpoint(tmp_path, lambda d: d.update(tensors=tensors_name))
    opened = []
    monkeypatch.setattr(
        "napari_allbag.training.checkpoint.load_tensors", lambda path: opened.append(path) or {}
    )
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(tmp_path, "stage")
    assert not opened
    message = str(caught.value)
    assert str(json_path) in message and "tensors" in message and "delete it" in message


def test_checkpoint_tensor_link_leading_out_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    save_file({"w": torch.zeros(2)}, outside)
    run = tmp_path / "run"
    run.mkdir()
    (run / "evil.safetensors").symlink_to(outside)
    _tamper_checkpoint(run, lambda d: d.update(tensors="evil.safetensors"))
    with pytest.raises(CheckpointError, match="outside .* through a symbolic link"):
        load_checkpoint(run, "stage")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["state"].update(epoch="3"), "state.epoch"),
        (lambda d: d["state"].update(epoch=2.5), "state.epoch"),
        (lambda d: d["state"].update(history={"epoch": 1}), "state.history"),
        (lambda d: d["state"]["schedule"].update(lr="fast"), "state.schedule.lr"),
        (lambda d: d["state"]["schedule"].update(surprise=1), "state.schedule.surprise"),
        (lambda d: d["state"].update(finished="no"), "state.finished"),
        (lambda d: d.update(state=[]), "state"),
    ],
)
def test_damaged_checkpoint_state_is_refused(tmp_path, change, field):
    _tamper_checkpoint(tmp_path, change)
    with pytest.raises(CheckpointError, match=re.escape(field)):
        load_checkpoint(tmp_path, "stage")


def test_resume_refuses_a_checkpoint_missing_what_it_reads(tmp_path):
    _, state = _real_stage_state()
    del state["optimizer"]
    with pytest.raises(CheckpointError, match="state.optimizer is missing"):
        validate_stage_state(state, tmp_path / "stage.json", CheckpointError)
    with pytest.raises(SchemaError, match="state.schedule is missing"):
        validate_stage_state({"epoch": 1, "history": []}, tmp_path / "stage.json")


def test_validate_checkpoint_returns_the_file_inside_the_folder(tmp_path):
    document = {"format": 1, "tensors": "s.000001.safetensors", "state": {}}
    path = validate_checkpoint(document, tmp_path / "s.json")
    assert path == tmp_path / "s.000001.safetensors"


# ----------------------------------------------------------------------------- safe_child


def test_safe_child_keeps_names_inside_and_refuses_the_rest(tmp_path):
    (tmp_path / "sub").mkdir()
    assert safe_child(tmp_path, "sub/a.txt") == tmp_path / "sub" / "a.txt"
    (tmp_path / "inner").symlink_to(tmp_path / "sub")
    assert safe_child(tmp_path, "inner/a.txt") == tmp_path / "inner" / "a.txt"
    (tmp_path / "out").symlink_to(tmp_path.parent)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for bad in ["", " ", "/etc/passwd", "C:\\x", "..", "a/../../b", "out/x", "a\x00b", 5, None]:
        with pytest.raises(UnsafePathError):
            safe_child(tmp_path, bad)
    with pytest.raises(UnsafePathError):
        safe_child(tmp_path, "loop/x")
