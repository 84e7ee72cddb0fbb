"""Code-shape figures for the package: the longest functions, the widest signatures, root modules.

Reads the source with `ast` only (nothing is imported), so it runs anywhere in a second:

    python benchmarks/code_metrics.py            # top 15 of each, for src/napari_allbag
    python benchmarks/code_metrics.py --top 30 --under src/napari_allbag/training

A function's length is its source lines from `def` (or its first decorator) to its last line;
nested functions count both inside their parent and on their own (the second column counts
the functions defined inside one). Top-level functions or classes of the same name in two
modules are listed as possible duplicates. A signature's width is its
number of parameters, `self`/`cls` not counted, `*args`/`**kwargs` counted as one each.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "napari_allbag"


@dataclass(frozen=True)
class FunctionShape:
    """One function's place, length in lines and number of parameters."""

    where: str
    lines: int
    params: int
    nested: int


def _param_count(args: ast.arguments) -> int:
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (args.vararg is not None) + (args.kwarg is not None)


def _functions(tree: ast.AST, module: str) -> list[FunctionShape]:
    """Every function and method in a module, qualified by its enclosing classes and functions."""
    shapes: list[FunctionShape] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                nested = sum(
                    isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in ast.walk(child)
                    if n is not child
                )
                shapes.append(
                    FunctionShape(
                        where=f"{module}:{prefix}{child.name}",
                        lines=child.end_lineno - first + 1,
                        params=_param_count(child.args),
                        nested=nested,
                    )
                )
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return shapes


def collect(root: Path) -> list[FunctionShape]:
    """The shapes of every function in the `.py` files under `root`."""
    shapes: list[FunctionShape] = []
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        shapes.extend(_functions(ast.parse(path.read_text(encoding="utf-8")), module))
    return shapes


def same_names(root: Path) -> dict[str, list[str]]:
    """Public top-level function and class names defined in more than one module under `root`."""
    where: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            defines = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            if isinstance(node, defines) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(module)
    return {name: modules for name, modules in sorted(where.items()) if len(modules) > 1}


def root_modules(package: Path) -> list[str]:
    """The `.py` modules directly in the package folder (not in a subpackage)."""
    return sorted(p.name for p in package.glob("*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    parser.add_argument(
        "--under", type=Path, default=PACKAGE, help="folder to measure (default the package)"
    )
    args = parser.parse_args(argv)
    root = args.under.resolve()
    shapes = collect(root)

    print(f"functions under {root.relative_to(REPO)}: {len(shapes)}")
    print(
        f"  over 60 lines: {sum(s.lines > 60 for s in shapes)}, over 80: "
        f"{sum(s.lines > 80 for s in shapes)}; over 8 parameters: "
        f"{sum(s.params > 8 for s in shapes)}"
    )
    print("\nlongest functions (lines, functions defined inside):")
    for s in sorted(shapes, key=lambda s: (-s.lines, s.where))[: args.top]:
        print(f"  {s.lines:4d}  {s.nested:2d}  {s.where}")
    print("\nwidest signatures (parameters besides self):")
    for s in sorted(shapes, key=lambda s: (-s.params, s.where))[: args.top]:
        print(f"  {s.params:4d}  {s.where}")
    twins = same_names(root)
    print(f"\npublic names defined in more than one module: {len(twins)}")
    for name, where in twins.items():
        print(f"  {name}: {', '.join(where)}")
    modules = root_modules(PACKAGE)
    print(f"\nmodules at the package root: {len(modules)} ({', '.join(modules)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
