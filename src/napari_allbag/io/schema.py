"""Bounded schemas for the JSON files a user can edit: bundle.json and training checkpoints.

A bundle or a checkpoint is read back from disk, where anyone may have edited it. Before a single
tensor or module is allocated, every field the loader uses is checked here for its type (``"64"``
and ``64.7`` are not integers, ``true`` is not a number), its range (an ``img_size`` of 20000
would need tens of GB), its form (a backbone name is a timm identifier, never a path or a hub
address) and, for file names, that it stays inside its folder (`safe_child`).

The checker is a few typed field specs (`Integer`, `Number`, `Text`, ...) composed into `Object`s.
A failure raises the caller's error class (`BundleError`, `CheckpointError`; `SchemaError` by
default) with one message naming the file, the field, what was found, what is allowed and the fix.
Fields the loader does not use are left alone, so a saver may add optional fields freely.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from napari_allbag.defaults import ENSEMBLE_RULES

#: A timm model name, optionally with a pretrained tag: `inception_resnet_v2`, `resnet50.a1_in1k`.
#: No `/`, `:` or upper case, so never a path or a hub address (which would download).
BACKGROUND = re.compile(r"auto|dark|bright")  # defaults.BACKGROUND_MODES
BACKBONE_NAME = re.compile(r"[a-z0-9_]{1,100}(\.[a-z0-9_]{1,60})?")
#: A checkpoint's tensor file: a plain file name beside its JSON (no folder part).
TENSOR_FILE_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,200}\.safetensors")

MIN_IMG_SIZE, MAX_IMG_SIZE = 8, 1024
MIN_CROP_SIZE, MAX_CROP_SIZE = 8, 2048
MAX_HIDDEN = 16384


class SchemaError(ValueError):
    """A JSON document that does not fit its schema; the message names file, field and fix."""


class _Invalid(Exception):
    """Raised inside the checker; turned into the caller's error with the file and the fix."""

    def __init__(self, field_name: str, found: Any, allowed: str):
        super().__init__(field_name)
        self.field_name = field_name
        self.found = found
        self.allowed = allowed


def describe(value: Any) -> str:
    """A short, unambiguous description of a JSON value for messages ("64" vs 64)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str):
        return f"the text {value[:60]!r}" + ("..." if len(value) > 60 else "")
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return repr(value)[:60]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Integer:
    """A JSON integer (no bool, no float such as 64.0) within [low, high]."""

    low: int
    high: int

    def allowed(self) -> str:
        return f"a whole number from {self.low} to {self.high}"

    def check(self, value: Any, name: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(name, value, self.allowed())
        if not self.low <= value <= self.high:
            raise _Invalid(name, value, self.allowed())


@dataclass(frozen=True)
class Number:
    """A finite JSON number within [low, high], or [low, high) with `high_open`."""

    low: float
    high: float
    high_open: bool = False

    def allowed(self) -> str:
        closing = ")" if self.high_open else "]"
        return f"a number in [{self.low:g}, {self.high:g}{closing}"

    def check(self, value: Any, name: str) -> None:
        if not _is_number(value) or not math.isfinite(value):
            raise _Invalid(name, value, self.allowed())
        too_high = value >= self.high if self.high_open else value > self.high
        if value < self.low or too_high:
            raise _Invalid(name, value, self.allowed())


@dataclass(frozen=True)
class Boolean:
    def allowed(self) -> str:
        return "true or false"

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, bool):
            raise _Invalid(name, value, self.allowed())


@dataclass(frozen=True)
class Text:
    """A string of at most `max_length` characters, matching `pattern` in full where given."""

    max_length: int = 200
    pattern: re.Pattern | None = None
    what: str = ""

    def allowed(self) -> str:
        return self.what or f"a text of at most {self.max_length} characters"

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, str) or len(value) > self.max_length:
            raise _Invalid(name, value, self.allowed())
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise _Invalid(name, value, self.allowed())


@dataclass(frozen=True)
class Floats:
    """Exactly `count` finite numbers within [low, high]."""

    count: int
    low: float
    high: float

    def allowed(self) -> str:
        return f"a list of {self.count} numbers in [{self.low:g}, {self.high:g}]"

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, list) or len(value) != self.count:
            raise _Invalid(name, value, self.allowed())
        for index, item in enumerate(value):
            if not _is_number(item) or not math.isfinite(item):
                raise _Invalid(f"{name}[{index}]", item, self.allowed())
            if not self.low <= item <= self.high:
                raise _Invalid(f"{name}[{index}]", item, self.allowed())


@dataclass(frozen=True)
class Array:
    """A list of at most `max_items`, each item checked by `item` where given."""

    item: Any = None
    max_items: int = 1_000_000

    def allowed(self) -> str:
        return f"a list of at most {self.max_items} items"

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, list) or len(value) > self.max_items:
            raise _Invalid(name, value, self.allowed())
        if self.item is not None:
            for index, item in enumerate(value):
                self.item.check(item, f"{name}[{index}]")


@dataclass(frozen=True)
class Nullable:
    """`spec`, or null."""

    spec: Any

    def allowed(self) -> str:
        return f"{self.spec.allowed()}, or null"

    def check(self, value: Any, name: str) -> None:
        if value is not None:
            self.spec.check(value, name)


@dataclass(frozen=True)
class Object:
    """A JSON object: known `fields` checked, `required` ones present, others kept (`extra`)."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    extra: bool = True

    def allowed(self) -> str:
        return "an object" + (f" with {', '.join(self.required)}" if self.required else "")

    def check(self, value: Any, name: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(name or "the document", value, self.allowed())
        prefix = f"{name}." if name else ""
        for key in self.required:
            if key not in value:
                raise _Invalid(prefix + key, _MISSING, self.fields[key].allowed())
        if not self.extra:
            unknown = sorted(str(key) for key in value if key not in self.fields)
            if unknown:
                raise _Invalid(prefix + unknown[0], _UNKNOWN, f"one of {sorted(self.fields)}")
        for key, spec in self.fields.items():
            if key in value:
                spec.check(value[key], prefix + key)


_MISSING = object()
_UNKNOWN = object()

ANY_OBJECT = Object()

#: An ensemble rule name (`defaults.ENSEMBLE_RULES`).
RULE_NAME = Text(20, re.compile("|".join(ENSEMBLE_RULES)), "one of " + ", ".join(ENSEMBLE_RULES))
_SHARE = Number(0.0, 1.0)
#: Bundle format 2's calibration, decision and subjects (`model.trust`).
TRUST_FIELDS = {
    "calibration": Object(
        {
            "temperatures": Object(
                {name: Number(0.001, 1000.0) for name in ("model_a", "model_b", "combined")},
                required=("model_a", "model_b", "combined"),
            ),
            "cells": Integer(0, 1_000_000_000),
            "ece_bins": Integer(1, 1000),
        },
        required=("temperatures",),
    ),
    "decision": Object(
        {
            "rule": RULE_NAME,
            "threshold": Nullable(
                Object(
                    {
                        "threshold": _SHARE,
                        "sensitivity": Nullable(_SHARE),
                        "specificity": Nullable(_SHARE),
                        "target_sensitivity": Nullable(_SHARE),
                        "rule": RULE_NAME,
                        "calibrated": Boolean(),
                    },
                    required=("threshold",),
                )
            ),
        }
    ),
    "subjects": Object(
        {"train": Array(Text(200)), "val": Array(Text(200))},
        extra=False,
    ),
}

BUNDLE_SCHEMA = Object(
    {
        "format_version": Integer(1, 1_000_000),
        "kind": Text(),
        "created": Text(),
        "backbone": Object(
            {
                "name": Text(161, BACKBONE_NAME, "a timm model name such as 'inception_resnet_v2'"),
                "img_size": Integer(MIN_IMG_SIZE, MAX_IMG_SIZE),
                "mean": Floats(3, 0.0, 1.0),
                "std": Floats(3, 0.001, 10.0),
                "num_features": Integer(1, 65536),
                "num_features_b": Integer(1, 65536),
            },
            required=("name",),
        ),
        "class_names": Array(Text(100), max_items=16),
        "combined_head": Object({"hidden": Integer(1, MAX_HIDDEN), "dropout": Number(0, 1, True)}),
        "combined_has_own_backbones": Boolean(),
        "segmentation": Object(
            {
                "crop_size": Integer(MIN_CROP_SIZE, MAX_CROP_SIZE),
                "erosion_size": Integer(0, 255),
                "min_area": Integer(0, 100_000_000),
                "largest_only": Boolean(),
                "background": Text(6, BACKGROUND, "one of auto, dark, bright"),
            }
        ),
        "training": ANY_OBJECT,
        "metrics": ANY_OBJECT,
        "versions": ANY_OBJECT,
        **TRUST_FIELDS,
    },
    required=("format_version", "backbone"),
)

_LOSS = Nullable(Number(-1e300, 1e300))
SCHEDULE_SCHEMA = Object(
    {
        "lr": Number(0, 1000),
        "factor": Number(0, 1),
        "patience_lr": Integer(0, 1_000_000),
        "patience_stop": Integer(0, 1_000_000),
        "min_lr": Number(0, 1000),
        "lr_best": _LOSS,
        "lr_wait": Integer(0, 1_000_000),
        "stop_best": _LOSS,
        "stop_wait": Integer(0, 1_000_000),
        "best_loss": _LOSS,
        "best_epoch": Integer(0, 1_000_000),
        "stopped": Boolean(),
    },
    required=("lr",),
    extra=False,
)

#: What a training stage keeps in its checkpoint's "state" (train_loop): checked where present.
STAGE_STATE_FIELDS = {
    "epoch": Integer(0, 1_000_000),
    "finished": Boolean(),
    "schedule": SCHEDULE_SCHEMA,
    "history": Array(ANY_OBJECT),
    "seed": Integer(-(2**63), 2**64 - 1),
    "optimizer": Object(
        {"param_groups": Array(ANY_OBJECT, 10_000), "scalars": ANY_OBJECT},
        required=("param_groups",),
    ),
    "scaler": Nullable(ANY_OBJECT),
}
STAGE_STATE_SCHEMA = Object(STAGE_STATE_FIELDS, required=("epoch", "schedule", "history"))

CHECKPOINT_SCHEMA = Object(
    {
        "format": Integer(1, 1),
        "tensors": Text(
            220, TENSOR_FILE_NAME, "a file name beside the checkpoint, ending in .safetensors"
        ),
        "state": Object(STAGE_STATE_FIELDS),
    },
    required=("format", "tensors", "state"),
)

BUNDLE_FIX = (
    "bundle.json was edited or is damaged: put back the value training wrote (or copy the "
    "bundle folder again, or train again)."
)
CHECKPOINT_FIX = (
    "The checkpoint was edited or is damaged: delete it (the .json and its .safetensors) to "
    "redo that stage, or start a new run."
)


def validate(
    document: Any, schema: Object, file: str | Path, fix: str, error: type[Exception] = SchemaError
) -> Any:
    """Check `document` against `schema`; raise `error` naming `file`, the field and `fix`."""
    try:
        schema.check(document, "")
    except _Invalid as problem:
        raise error(_message(file, problem, fix)) from None
    return document


def _message(file: str | Path, problem: _Invalid, fix: str) -> str:
    if problem.found is _MISSING:
        found = "is missing"
    elif problem.found is _UNKNOWN:
        found = "is not a known field"
    else:
        found = f"is {describe(problem.found)}"
    return f"{file}: {problem.field_name} {found}; allowed: {problem.allowed}. {fix}"


def validate_bundle_meta(
    meta: Any, file: str | Path, error: type[Exception] = SchemaError
) -> dict[str, Any]:
    """Check a parsed bundle.json (types, ranges, names) before anything is built from it."""
    return validate(meta, BUNDLE_SCHEMA, file, BUNDLE_FIX, error)


def validate_checkpoint(
    document: Any, file: str | Path, error: type[Exception] = SchemaError
) -> Path:
    """Check a parsed checkpoint JSON; return its tensor file, which stays inside its folder."""
    validate(document, CHECKPOINT_SCHEMA, file, CHECKPOINT_FIX, error)
    try:
        return safe_child(Path(file).parent, document["tensors"])
    except UnsafePathError as unsafe:
        raise error(f"{file}: tensors {unsafe}. {CHECKPOINT_FIX}") from None


def validate_stage_state(
    state: Any, file: str | Path, error: type[Exception] = SchemaError
) -> dict[str, Any]:
    """Check a training stage's checkpoint state has what resuming reads (train_loop)."""
    fix = CHECKPOINT_FIX
    try:
        STAGE_STATE_SCHEMA.check(state, "state")
        if not state.get("finished", False) and "optimizer" not in state:
            raise _Invalid("state.optimizer", _MISSING, "an object (an unfinished stage needs it)")
    except _Invalid as problem:
        raise error(_message(file, problem, fix)) from None
    return state


def limits(schema: Object, prefix: str = "") -> list[tuple[str, str]]:
    """(field, allowed) for every bounded field of `schema`, for the docs' limits table."""
    rows: list[tuple[str, str]] = []
    for key, spec in schema.fields.items():
        name = prefix + key
        if isinstance(spec, Object):
            rows += limits(spec, name + ".")
        elif spec is not ANY_OBJECT:
            rows.append((name, spec.allowed()))
    return rows


# ----------------------------------------------------------------------------- paths


class UnsafePathError(SchemaError):
    """A relative path read from a file that would lead outside its folder."""


def safe_child(folder: str | Path, relative: Any) -> Path:
    """`folder / relative`, refusing anything that could lead outside `folder`.

    Refused: non-text, empty, absolute paths (POSIX or Windows, with a drive), `..` parts, NUL
    characters, and paths that leave `folder` through a symbolic link (checked on the resolved
    path). The returned path is the unresolved one inside `folder`.
    """
    shown = describe(relative)
    if not isinstance(relative, str) or not relative.strip():
        raise UnsafePathError(f"is {shown}, not a relative file name")
    if "\x00" in relative:
        raise UnsafePathError(f"is {shown}, which holds a NUL character")
    windows = PureWindowsPath(relative)
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or windows.drive or windows.root:
        raise UnsafePathError(f"is {shown}, an absolute path: only names inside {folder} are read")
    if ".." in posix.parts:
        raise UnsafePathError(f"is {shown}, which leads outside {folder} ('..' is not allowed)")
    candidate = Path(folder) / Path(*posix.parts)
    try:
        base = Path(folder).resolve()
        target = candidate.resolve()
    except (OSError, RuntimeError) as problem:  # RuntimeError: a symlink loop (Python < 3.13)
        raise UnsafePathError(f"is {shown}, which cannot be resolved ({problem})") from None
    if target != base and base not in target.parents:
        raise UnsafePathError(
            f"is {shown}, which leads outside {folder} through a symbolic link (to {target})"
        )
    return candidate


# ----------------------------------------------------------------------------- tensors


def check_finite_tensors(tensors: Mapping[str, Any], file: str | Path, error=SchemaError) -> None:
    """Refuse NaN or infinite weights, and negative BatchNorm variances (both give NaN outputs)."""
    import torch

    for name, tensor in tensors.items():
        if not torch.is_floating_point(tensor):
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise error(
                f"{file}: tensor {name!r} holds {bad} NaN or infinite value(s); such weights give "
                "meaningless (NaN) probabilities. The file is damaged or training diverged: copy "
                "the bundle again, or train again (a lower learning rate may help)."
            )
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise error(
                f"{file}: tensor {name!r} holds negative variances, which give NaN outputs. The "
                "file is damaged: copy the bundle again, or train again."
            )
