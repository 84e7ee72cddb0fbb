"""Lazy re-exports for the subpackages' `__init__.py`: a name's module loads on first use.

`from napari_allbag.model import load_bundle` works as if `model/__init__.py` imported it, yet
`import napari_allbag.model.networks` does not load the bundle code (OpenCV) nor the CLI torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, exporting {name: submodule}."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
