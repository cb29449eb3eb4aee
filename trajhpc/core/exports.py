"""A package's public names, imported from its modules on first use (PEP 562).

A package ``__init__`` that imported its modules eagerly would make ``import
trajhpc.job.scoring`` load torch, and ``trajhpc status`` pay for plotting libraries.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(
    package: str, modules: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``: ``modules`` maps each of its
    modules to the public names it gives the package."""
    where = {name: module for module, names in modules.items() for name in names}
    if len(where) != sum(len(names) for names in modules.values()):
        raise ValueError(f"{package}: a name is exported by two modules")

    def __getattr__(name: str) -> Any:
        if name not in where:
            # AttributeError lets `from package import submodule` fall back to importing it.
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return sorted(where), __getattr__, __dir__
