"""Seeded fuzzing: hundreds of random and mutated images and JSON documents thrown at read_image,
the bundle loader and the checkpoint reader give a result or their own clear error, nothing else.

Inputs are small (at most a few kB), so every case is quick; a case that crashes is reported with
its seed and index so it can be replayed.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from napari_allbag.io.images import ImageReadError, read_image
from napari_allbag.io.schema import validate_stage_state
from napari_allbag.model.bundle import BundleError, load_bundle, read_bundle_meta
from napari_allbag.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_allbag.training.schedule import PlateauSchedule
from tests.model_factory import make_tiny_bundle

SEED = 20260513
IMAGE_CASES = 360
BUNDLE_CASES = 240
CHECKPOINT_CASES = 160
#: Bundle mutations that pass bundle.json's checks are loaded for real, up to this many.
FULL_LOADS = 24

ODD_VALUES = [
    None, True, False, 0, -1, 1, 7, 2**31, 2**63, 10**30, 1e308, -1e308, math.nan, math.inf,
    -math.inf, 0.5, 64.7, 64.0, "", "64", "../../../../etc/passwd", "/etc/passwd", "x" * 5000,
    [], [1, 2, 3], [0.5, 0.5, 0.5], {}, {"a": 1}, "resnet18", "hf-hub:timm/resnet18",
]  # fmt: skip


def _seed_images(folder: Path) -> list[bytes]:
    """Small valid files of each format and several pixel types, to mutate."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    colour = np.dstack([xx * 10, yy * 10, (xx + yy) * 5]).astype(np.uint8)
    grey16 = (xx * yy * 100).astype(np.uint16)
    rgba = np.dstack([colour, np.full((24, 24), 200, np.uint8)])
    files = []
    for name, array, options in [
        ("a.png", colour, []),
        ("b.png", grey16, []),
        ("c.png", rgba, []),
        ("d.jpg", colour, [cv2.IMWRITE_JPEG_QUALITY, 80]),
        ("e.jpg", colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        ("f.bmp", colour, []),
        ("g.tif", colour, []),
    ]:
        cv2.imwrite(str(folder / name), array, options)
        files.append((folder / name).read_bytes())
    for dtype in (np.float64, np.int32, np.int8):
        tifffile.imwrite(folder / "h.tif", (rng.random((16, 16, 3)) * 300 - 20).astype(dtype))
        files.append((folder / "h.tif").read_bytes())
    return files


def _mutate_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    buffer = bytearray(data)
    kind = rng.integers(6)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.integers(1, 12)):
            buffer[rng.integers(len(buffer))] = rng.integers(256)
    elif kind == 1:  # cut short
        buffer = buffer[: rng.integers(1, len(buffer))]
    elif kind == 2:  # insert random bytes
        at = rng.integers(len(buffer))
        buffer[at:at] = rng.bytes(int(rng.integers(1, 64)))
    elif kind == 3:  # a header with random bytes after it
        buffer = buffer[: rng.integers(2, 40)] + bytearray(rng.bytes(int(rng.integers(1, 3000))))
    elif kind == 4:  # header fields (sizes, counts) set to extreme values
        for _ in range(rng.integers(1, 4)):
            at = rng.integers(min(len(buffer), 64))
            buffer[at : at + 4] = rng.choice(
                [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\0\0\0\0"]
            )
    else:  # plain noise
        buffer = bytearray(rng.bytes(int(rng.integers(1, 3000))))
    return bytes(buffer)


def test_read_image_on_random_and_mutated_files(tmp_path):
    rng = np.random.default_rng(SEED)
    seeds = _seed_images(tmp_path)
    suffixes = [".png", ".jpg", ".bmp", ".tif", ".jpeg", ".TIFF"]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"read": 0, "refused": 0}
    for index in range(IMAGE_CASES):
        data = _mutate_bytes(seeds[index % len(seeds)], rng)
        path = tmp_path / f"case{index}{suffixes[rng.integers(len(suffixes))]}"
        path.write_bytes(data)
        try:
            image = read_image(path)
        except ImageReadError as error:
            assert error.path == path and str(path) in str(error)
            outcomes["refused"] += 1
        except Exception as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {index} (seed {SEED}): {type(error).__name__}: {error}")
        else:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            assert image.flags.c_contiguous
            outcomes["read"] += 1
        path.unlink()
    assert outcomes["refused"] > IMAGE_CASES // 3 and outcomes["read"] > 10
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 1024, f"reading small files raised peak memory by {grown_mib:.0f} MiB"


def _json_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _json_paths(value, (*prefix, index))


def _mutate_json(document, rng: np.random.Generator):
    """A copy of `document` with one to three fields replaced, removed or nested oddly."""
    document = json.loads(json.dumps(document))
    for _ in range(rng.integers(1, 4)):
        paths = [p for p in _json_paths(document) if p]
        if not paths:
            return ODD_VALUES[rng.integers(len(ODD_VALUES))]
        *parents, last = paths[rng.integers(len(paths))]
        node = document
        for key in parents:
            node = node[key]
        action = rng.integers(4)
        if action == 0 and isinstance(node, dict):
            del node[last]
        elif action == 1:
            node[last] = [node[last]]
        else:
            node[last] = ODD_VALUES[rng.integers(len(ODD_VALUES))]
    return document


def _mutated_texts(document, count: int, rng: np.random.Generator):
    """JSON texts: mostly field mutations, some raw byte damage, some odd whole documents."""
    text = json.dumps(document)
    for index in range(count):
        kind = index % 8
        if kind == 6:
            yield _mutate_bytes(text.encode(), rng)
        elif kind == 7:
            odd = ["[" * 100_000, "null", "[]", '"text"', "1e999", "{" * 3 + "}" * 3, "\ufeff{}"]
            yield odd[index // 8 % len(odd)].encode("utf-8")
        else:
            yield json.dumps(_mutate_json(document, rng)).encode("utf-8")


def test_bundle_loader_on_mutated_bundle_json(tmp_path):
    rng = np.random.default_rng(SEED + 1)
    original = make_tiny_bundle(tmp_path / "original", seed=3)
    document = json.loads((original / "bundle.json").read_text())
    folder = tmp_path / "case"
    shutil.copytree(original, folder)
    full_loads = refused = 0
    for index, text in enumerate(_mutated_texts(document, BUNDLE_CASES, rng)):
        (folder / "bundle.json").write_bytes(text)
        try:
            read_bundle_meta(folder)
            if full_loads < FULL_LOADS:
                full_loads += 1
                load_bundle(folder)
        except BundleError as error:
            assert str(folder) in str(error)
            refused += 1
        except Exception as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {index} (seed {SEED + 1}): {type(error).__name__}: {error}")
    assert refused > BUNDLE_CASES // 2 and full_loads > 5


def test_checkpoint_reader_on_mutated_checkpoint_json(tmp_path):
    rng = np.random.default_rng(SEED + 2)
    import torch

    schedule = PlateauSchedule(lr=1e-3)
    schedule.step(1, 0.7)
    state = {
        "epoch": 1,
        "finished": False,
        "schedule": schedule.to_dict(),
        "history": [{"epoch": 1, "loss": 0.9, "val_loss": 0.7}],
        "seed": 0,
        "optimizer": {"param_groups": [{"lr": 1e-3, "params": [0]}], "scalars": {"0": {}}},
        "scaler": None,
    }
    json_path = save_checkpoint(tmp_path, "stage", {"model.w": torch.zeros(3)}, state)
    document = json.loads(json_path.read_text())
    refused = 0
    for index, text in enumerate(_mutated_texts(document, CHECKPOINT_CASES, rng)):
        json_path.write_bytes(text)
        try:
            _, read_state = load_checkpoint(tmp_path, "stage")
            validate_stage_state(read_state, json_path, CheckpointError)
            PlateauSchedule.from_dict(read_state["schedule"])  # what resuming builds from it
        except CheckpointError as error:
            assert str(json_path) in str(error)
            refused += 1
        except Exception as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {index} (seed {SEED + 2}): {type(error).__name__}: {error}")
    assert refused > CHECKPOINT_CASES // 2
