"""The package's layout: imports flow one way, GUI libraries stay in widgets/ and the demo viewer.

Walks every module of `src/napari_allbag` with `ast` (imports inside functions and TYPE_CHECKING
blocks count too) and checks each `__init__.py`'s lazy re-exports name something that exists.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import napari_allbag

PACKAGE_DIR = Path(napari_allbag.__file__).resolve().parent

#: Rank of each part of the package: a module may import its own subpackage and lower ranks only.
#: Rank 0 is the foundation (its members may import one another).
RANKS = {
    "": 0,  # napari_allbag/__init__.py (the version)
    "_lazy": 0,
    "progress": 0,
    "defaults": 0,
    "io": 0,
    "data": 1,
    "segmentation": 2,
    "model": 3,
    "inference": 4,
    "evaluation": 5,
    "training": 6,
    "demo": 7,
    "widgets": 8,
    "cli": 8,
    "__main__": 9,
}
GUI_LIBRARIES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt"}
#: Where GUI imports are allowed: the subpackage, or one module.
GUI_ALLOWED = ("widgets", "demo.viewer")


def module_names() -> list[str]:
    """Dotted names below napari_allbag of every module ("" for the package itself)."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def module_path(name: str) -> Path:
    base = PACKAGE_DIR.joinpath(*name.split(".")) if name else PACKAGE_DIR
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def imported_modules(name: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in module `name`."""
    path = module_path(name)
    package = ["napari_allbag", *name.split(".")] if name else ["napari_allbag"]
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "napari_allbag":  # `from napari_allbag import io` names a subpackage
                found += [
                    (node.lineno, f"napari_allbag.{a.name}")
                    for a in node.names
                    if (PACKAGE_DIR / a.name).is_dir() or (PACKAGE_DIR / f"{a.name}.py").is_file()
                ]
    return found


def part_of(name: str) -> str:
    """The entry of RANKS a module (dotted below napari_allbag) belongs to."""
    head = name.split(".")[0]
    if head not in RANKS:
        raise AssertionError(
            f"napari_allbag.{name} is not in the rank table of tests/test_layout.py"
        )
    return head


def test_every_module_has_a_rank():
    for name in module_names():
        part_of(name)


def test_no_gui_import_outside_widgets_and_the_demo_viewer():
    offenders = []
    for name in module_names():
        if name.startswith(GUI_ALLOWED[0] + ".") or name in GUI_ALLOWED:
            continue
        for line, module in imported_modules(name):
            if module.split(".")[0] in GUI_LIBRARIES:
                offenders.append(
                    f"napari_allbag/{module_path(name).relative_to(PACKAGE_DIR)}:{line} imports {module}"
                )
    assert not offenders, "\n".join(offenders)


def test_imports_flow_one_way():
    offenders = []
    for name in module_names():
        here = part_of(name)
        for line, module in imported_modules(name):
            if module != "napari_allbag" and not module.startswith("napari_allbag."):
                continue
            there = part_of(module.removeprefix("napari_allbag").removeprefix("."))
            if there == here or RANKS[there] < RANKS[here] or RANKS[there] == RANKS[here] == 0:
                continue
            offenders.append(
                f"napari_allbag/{module_path(name).relative_to(PACKAGE_DIR)}:{line} "
                f"({here}, rank {RANKS[here]}) imports {module} ({there}, rank {RANKS[there]})"
            )
    assert not offenders, "\n".join(offenders)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The checks above would pass vacuously if the walk missed lazy (in-function) imports."""
    imports = {module for _, module in imported_modules("cli.predict")}
    assert "napari_allbag.inference.predict" in imports  # imported inside `run`
    assert {module for _, module in imported_modules("demo.viewer")} & GUI_LIBRARIES


SUBPACKAGES = sorted({name.split(".")[0] for name in module_names() if "." in name})


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_subpackage_documents_itself_and_its_exports_exist(subpackage):
    init = module_path(subpackage)
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring and "May import" in docstring, (
        f"{init} needs a docstring saying what it may import"
    )
    package = importlib.import_module(f"napari_allbag.{subpackage}")
    for name, module in getattr(package, "_EXPORTS", {}).items():
        tree = ast.parse(module_path(f"{subpackage}.{module}").read_text(encoding="utf-8"))
        defined = (
            {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
            | {
                target.id
                for node in tree.body
                if isinstance(node, ast.Assign | ast.AnnAssign)
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Name)
            }
            | {
                alias.asname or alias.name
                for node in tree.body
                if isinstance(node, ast.ImportFrom)
                for alias in node.names
            }
        )
        assert name in defined, (
            f"napari_allbag.{subpackage} exports {name} from {module}, which has none"
        )
    assert sorted(getattr(package, "__all__", [])) == sorted(getattr(package, "_EXPORTS", {}))


def test_lazy_exports_resolve_and_unknown_names_fail():
    from napari_allbag.segmentation import SegmentationParams
    from napari_allbag.segmentation.dark import SegmentationParams as direct

    assert SegmentationParams is direct
    with pytest.raises(ImportError):
        from napari_allbag.segmentation import no_such_name  # noqa: F401
