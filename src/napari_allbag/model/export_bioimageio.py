"""A model bundle as a bioimage.io model package (model RDF 0.5), runnable by other tools.

The package holds the ensemble as ONE graph: a uint8 RGB crop batch (batch, channel, y, x) at the
backbone's size in, the three models' class probabilities (batch, model, class) out, in model
order model-A, model-B, combined and class order hem, all. The paper's decision (the highest of
the six probabilities wins, ties to ALL) and the Otsu segmentation that makes the crops stay in
napari-allbag: the documentation says so and how. Weights go as TorchScript (torch.jit.trace)
and, on request, ONNX; the test input is the two shipped sample cells cropped by the plugin, the
test output what the graph gives for them. bioimage.io itself is an optional extra
(`pip install napari-allbag[bioimageio]`), imported only here.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch

from napari_allbag import __version__
from napari_allbag.io.atomic import write_bytes_atomic
from napari_allbag.model.card import (
    ModelCardError,
    build_model_card,
    format_model_card,
    validate_model_card,
)
from napari_allbag.model.networks import CLASS_NAMES
from napari_allbag.progress import Progress

WEIGHT_FORMATS = ("torchscript", "onnx")
INPUT_ID = "crop"
OUTPUT_ID = "probabilities"
MODEL_NAMES = ("model_a", "model_b", "combined")
ONNX_OPSET = 17
DEFAULT_LICENSE = "CC-BY-4.0"
#: Stands in when no --author is given (the spec wants at least one); the CLI says so.
UNNAMED_AUTHOR = "napari-allbag user (unnamed)"
SAMPLE_CELLS = ("single_all_cell.png", "single_hem_cell.png")
PAPER = {
    "text": "Liu Y., Long F. (2019) Acute lymphoblastic leukemia cells image analysis with deep "
    "bagging ensemble learning. In: ISBI 2019 C-NMC Challenge: Classification in Cancer Cell "
    "Imaging, Lecture Notes in Bioengineering, Springer, Singapore.",
    "doi": "10.1007/978-981-15-0798-4_12",
}
DATA = {
    "text": "Gupta A., Gupta R. (2019) ALL Challenge dataset of ISBI 2019 (C-NMC 2019). The Cancer "
    "Imaging Archive.",
    "doi": "10.7937/tcia.2019.dc64i46r",
}


class ExportError(ValueError):
    """The bundle cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ExportSettings:
    """Where the package goes and what goes in it."""

    out: Path
    weight_formats: tuple[str, ...] = ("torchscript",)
    authors: tuple[str, ...] = ()
    github_user: str | None = None  # of the first author (bioimage.io asks for a maintainer)
    license: str = DEFAULT_LICENSE
    overwrite: bool = False

    def __post_init__(self) -> None:
        unknown = [f for f in self.weight_formats if f not in WEIGHT_FORMATS]
        if unknown or not self.weight_formats:
            raise ExportError(
                f"weight formats {list(unknown) or '(none)'} unknown: choose from {WEIGHT_FORMATS}"
            )


def require_bioimageio() -> Any:
    """The `bioimageio.spec` module, or an ExportError that says how to install it."""
    try:
        import bioimageio.spec as spec
    except ImportError as error:
        raise ExportError(
            "bioimage.io export needs the bioimageio.spec package: pip install "
            "'napari-allbag[bioimageio]' (or pip install bioimageio.spec)."
        ) from error
    return spec


# ----------------------------------------------------------------------------- the graph


class ExportGraph(torch.nn.Module):
    """uint8 crops (B, 3, S, S) -> the three models' class probabilities (B, 3, 2), float32."""

    def __init__(self, ensemble: torch.nn.Module):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.ensemble(crops)


def sample_crops(segmentation: Any, img_size: int) -> np.ndarray:
    """The shipped ALL and HEM sample cells cut as the plugin cuts them, (2, 3, S, S) uint8."""
    from napari_allbag.io.images import read_image
    from napari_allbag.segmentation.dark import segment_image

    folder = Path(__file__).resolve().parents[1] / "sample_data"
    crops = []
    for name in SAMPLE_CELLS:
        result = segment_image(read_image(folder / name), segmentation, source=name)
        if not result.n_cells:
            raise ExportError(f"the bundle's segmentation finds no cell in sample_data/{name}")
        crops.append(result.crops[int(np.argmax(result.table["area"]))])
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    if batch.shape[-1] != img_size:
        batch = torch.nn.functional.interpolate(
            batch, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True
        )
    return batch.round().clamp(0, 255).to(torch.uint8).contiguous().numpy()


def trace_graph(graph: ExportGraph, example: np.ndarray, path: Path) -> torch.jit.ScriptModule:
    """Trace the graph on `example` and save it as TorchScript at `path`.

    The shape checks of `Preprocess` become constants of the trace: the graph takes NCHW crops at
    the backbone's size only, which is what the package's input description says.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+: "torch.jit is deprecated"
        traced = torch.jit.trace(graph.eval(), torch.from_numpy(example), check_trace=False)
    traced.save(str(path))
    return traced


def export_onnx(graph: ExportGraph, example: np.ndarray, path: Path) -> None:
    """Write the graph as ONNX (opset `ONNX_OPSET`, a dynamic batch axis) at `path`."""
    try:
        with torch.no_grad():
            torch.onnx.export(
                graph.eval(),
                (torch.from_numpy(example),),
                str(path),
                input_names=[INPUT_ID],
                output_names=[OUTPUT_ID],
                dynamic_axes={INPUT_ID: {0: "batch"}, OUTPUT_ID: {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    except Exception as error:  # noqa: BLE001 - the exporter raises many kinds; say which step
        raise ExportError(f"ONNX export failed ({type(error).__name__}: {error})") from error


# ----------------------------------------------------------------------------- documentation


def documentation(card: dict[str, Any], img_size: int, segmentation: dict[str, Any]) -> str:
    """README.md of the package: what goes in and out, what stays in the plugin, the citations."""
    settings = ", ".join(f"{k}={v}" for k, v in segmentation.items()) or "defaults"
    warnings = "".join(f"> **{w}**\n\n" for w in card.get("warnings") or ())
    return f"""# napari-allbag: ALL vs HEM deep bagging ensemble

{warnings}Liu & Long's ISBI 2019 C-NMC deep bagging ensemble, exported by napari-allbag
{__version__}: two stage-1 models (model-A and model-B, trained on bagging subsets) and a
combined model on both backbones' features, in one graph.

## Inputs and outputs

- input `{INPUT_ID}`: uint8 RGB crops, axes (batch, channel, y, x), {img_size} x {img_size}
  pixels, 0..255. The graph scales to 0..1 and normalises with the backbone's mean and std.
- output `{OUTPUT_ID}`: float32 class probabilities, axes (batch, model, channel): models
  {", ".join(MODEL_NAMES)}; classes {", ".join(CLASS_NAMES)} (P(ALL) is channel 1).

The paper's decision is not in the graph: **the single highest of the six probabilities wins**
(its class is the cell's class; a tie goes to ALL).

## The crop stays in napari-allbag

The crops must be made the way training made them, and that step is not part of this package:
Otsu threshold, erosion, the cell's filled convex hull kept, everything else black, the cell
centred in a square crop (segmentation settings of this model: {settings}), resized to
{img_size} x {img_size}. `napari-allbag segment IMAGES --out DIR` writes such crops, and
`napari-allbag predict BUNDLE IMAGES` runs the whole pipeline. Whole microscope fields or
uncropped cells fed to this graph give meaningless probabilities.

## Validation

Figures measured by napari-allbag on the held-out validation subjects of the training data, and
the rest of the model card:

```text
{format_model_card(card).rstrip()}
```

Validate on your own labelled data with `napari-allbag evaluate BUNDLE DATA_DIR` before relying on
the model: the weighted F1 of the paper is 0.84 on the C-NMC preliminary test set and 0.876 on the
final test set.

## Cite

- {PAPER["text"]} doi:{PAPER["doi"]}
- {DATA["text"]} doi:{DATA["doi"]}
"""


def model_name(backbone: str) -> str:
    """A name the spec accepts (letters, digits, _+- () and spaces, at most 64 characters)."""
    clean = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", backbone)
    return f"napari-allbag ALL-HEM bagging ensemble ({clean})"[:64]


def write_cover(crops: np.ndarray, path: Path) -> None:
    """The two test crops side by side (a 2:1 cover image)."""
    import cv2

    image = np.concatenate([crop.transpose(1, 2, 0) for crop in crops[:2]], axis=1)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)):
        raise ExportError(f"cannot write the cover image {path}")


# ----------------------------------------------------------------------------- the description


@dataclass(frozen=True)
class PackageFiles:
    """The files a package description points at, all in one working folder."""

    test_input: Path
    test_output: Path
    sample_input: Path
    sample_output: Path
    readme: Path
    cover: Path
    weights: dict[str, Path]


def _tensors(v0_5: Any, files: PackageFiles, img_size: int) -> tuple[Any, Any]:
    crop = v0_5.InputTensorDescr(
        id=v0_5.TensorId(INPUT_ID),
        description="uint8 RGB cell crops made by napari-allbag's Otsu segmentation",
        axes=[
            v0_5.BatchAxis(),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in ("r", "g", "b")]),
            v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=img_size),
            v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=img_size),
        ],
        test_tensor=v0_5.FileDescr(source=files.test_input),
        sample_tensor=v0_5.FileDescr(source=files.sample_input),
        data=v0_5.IntervalOrRatioDataDescr(type="uint8", range=(0, 255)),
    )
    probabilities = v0_5.OutputTensorDescr(
        id=v0_5.TensorId(OUTPUT_ID),
        description="class probabilities of model-A, model-B and the combined model",
        axes=[
            v0_5.BatchAxis(),
            v0_5.IndexOutputAxis(id=v0_5.AxisId("model"), size=len(MODEL_NAMES)),
            v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in CLASS_NAMES]),
        ],
        test_tensor=v0_5.FileDescr(source=files.test_output),
        sample_tensor=v0_5.FileDescr(source=files.sample_output),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    return crop, probabilities


def _weights(v0_5: Any, files: PackageFiles) -> Any:
    entries: dict[str, Any] = {}
    first = next(iter(files.weights))
    if "torchscript" in files.weights:
        entries["torchscript"] = v0_5.TorchscriptWeightsDescr(
            source=files.weights["torchscript"],
            pytorch_version=v0_5.Version(torch.__version__.split("+")[0]),
            parent=None if first == "torchscript" else first,
            comment="torch.jit.trace of the napari-allbag ensemble (one graph, three models)",
        )
    if "onnx" in files.weights:
        entries["onnx"] = v0_5.OnnxWeightsDescr(
            source=files.weights["onnx"],
            opset_version=ONNX_OPSET,
            parent=None if first == "onnx" else first,
            comment="torch.onnx.export of the napari-allbag ensemble",
        )
    return v0_5.WeightsDescr(**entries)


def _authors(v0_5: Any, settings: ExportSettings) -> list[Any]:
    names = list(settings.authors) or [UNNAMED_AUTHOR]
    return [
        v0_5.Author(name=name, github_user=settings.github_user if i == 0 else None)
        for i, name in enumerate(names)
    ]


def describe(files: PackageFiles, card: dict[str, Any], settings: ExportSettings, backbone) -> Any:
    """The bioimage.io model description (spec 0.5) of the package's files.

    `backbone` is the loaded bundle's `BackboneConfig` (its name and input size); the card
    gives the rest.
    """
    require_bioimageio()
    from bioimageio.spec.model import v0_5

    crop, probabilities = _tensors(v0_5, files, int(backbone.img_size))
    synthetic = bool((card.get("training_data") or {}).get("synthetic"))
    try:
        return _model_descr(v0_5, files, settings, backbone.name, synthetic, (crop, probabilities))
    except ValueError as error:  # pydantic's ValidationError: name the field and the value
        raise ExportError(f"the bioimage.io description is invalid: {error}") from error


def _model_descr(v0_5, files, settings, backbone_name: str, synthetic: bool, tensors) -> Any:
    crop, probabilities = tensors
    return v0_5.ModelDescr(
        name=model_name(backbone_name),
        description=(
            ("DEMO, SYNTHETIC DATA, NOT FOR USE: " if synthetic else "")
            + "Tells leukemic blasts (ALL) from normal white blood cells (HEM) in single-cell "
            "crops: Liu & Long's C-NMC 2019 deep bagging ensemble, three models' probabilities."
        ),
        authors=_authors(v0_5, settings),
        cite=[
            v0_5.CiteEntry(text=PAPER["text"], doi=v0_5.Doi(PAPER["doi"])),
            v0_5.CiteEntry(text=DATA["text"], doi=v0_5.Doi(DATA["doi"])),
        ],
        license=v0_5.LicenseId(settings.license),
        documentation=v0_5.FileDescr(source=files.readme),
        covers=[v0_5.FileDescr(source=files.cover)],
        tags=["classification", "leukemia", "white-blood-cells", "microscopy", "2d", "pytorch"],
        inputs=[crop],
        outputs=[probabilities],
        weights=_weights(v0_5, files),
        version="0.1.0",
    )


# ----------------------------------------------------------------------------- the package


def _check_out(out: Path, overwrite: bool) -> Path:
    out = Path(out).expanduser()
    if out.suffix.lower() != ".zip":
        raise ExportError(f"{out}: a bioimage.io package is a .zip file; name it MODEL.zip")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give a file name ending in .zip")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; choose another name or pass --overwrite")
    return out


def _write_files(loaded: Any, work: Path, settings: ExportSettings, card: dict[str, Any]):
    """Graph, test tensors, cover and README in `work`: yields progress, returns PackageFiles."""
    img_size = int(loaded.backbone.img_size)
    graph = ExportGraph(loaded.ensemble).eval()
    example = sample_crops(loaded.segmentation, img_size)
    weights: dict[str, Path] = {}
    for done, fmt in enumerate(settings.weight_formats):
        yield Progress(done, len(settings.weight_formats), "graph", f"writing {fmt}")
        if fmt == "torchscript":
            weights[fmt] = work / "ensemble.torchscript.pt"
            trace_graph(graph, example, weights[fmt])
        else:
            weights[fmt] = work / "ensemble.onnx"
            export_onnx(graph, example, weights[fmt])
    with torch.no_grad():
        output = graph(torch.from_numpy(example)).float().numpy()
    files = PackageFiles(
        test_input=work / "test_input.npy",
        test_output=work / "test_output.npy",
        sample_input=work / "sample_input.tif",
        sample_output=work / "sample_output.tif",
        readme=work / "README.md",
        cover=work / "cover.png",
        weights=weights,
    )
    np.save(files.test_input, example)
    np.save(files.test_output, output)
    tifffile.imwrite(files.sample_input, example[:1])  # sample tensors: one cell, for people
    tifffile.imwrite(files.sample_output, output[:1])
    write_cover(example, files.cover)
    segmentation = loaded.segmentation
    segmentation = segmentation if isinstance(segmentation, dict) else segmentation.to_dict()
    files.readme.write_text(documentation(card, img_size, segmentation), encoding="utf-8")
    return files


def _card(meta: dict[str, Any], bundle: Path) -> dict[str, Any]:
    if "model_card" not in meta:
        return build_model_card(meta)
    try:
        return validate_model_card(meta["model_card"], str(bundle / "bundle.json"))
    except ModelCardError as error:
        raise ExportError(str(error)) from error


def export_bioimageio(
    bundle: str | Path, settings: ExportSettings
) -> Generator[Progress, None, Path]:
    """Write `bundle` as a bioimage.io model package at `settings.out`; returns its path."""
    require_bioimageio()
    from bioimageio.spec import save_bioimageio_package

    from napari_allbag.model.bundle import load_bundle

    out = _check_out(settings.out, settings.overwrite)
    yield Progress(0, 3, "export", "loading the bundle")
    loaded = load_bundle(bundle, "cpu")
    card = _card(loaded.meta, Path(bundle))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield Progress(1, 3, "export", "tracing the ensemble")
        files = yield from _write_files(loaded, work, settings, card)
        description = describe(files, card, settings, loaded.backbone)
        summary = description.validation_summary
        if summary.status == "failed":
            raise ExportError(f"the package description does not validate:\n{summary.format()}")
        yield Progress(2, 3, "export", "writing the package")
        packed = save_bioimageio_package(description, output_path=work / "package.zip")
        write_bytes_atomic(out, Path(packed).read_bytes())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    yield Progress(3, 3, "export", f"done: {out}")
    return out
