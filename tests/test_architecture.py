"""The shape docs/ARCHITECTURE.md promises: packages in data-flow order that import only
from themselves and the packages before them, no import circle (imports inside
functions included), no module above 500 lines, each package's public names exported."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trajhpc"
MAX_LINES = 500

# The data flow: each package may import from itself and those before it, never after.
ORDER = ("core", "spec", "data", "jobdir", "job", "study", "launch", "results", "cli")
RANK = {name: rank for rank, name in enumerate(ORDER)}
FOLDERS = tuple(name for name in ORDER if (PACKAGE / name).is_dir())


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__") or "__init__"] = path
    return out


def _imports(path: Path, *, module: str) -> set[str]:
    """trajhpc modules the file imports anywhere in it, at the top or inside a function
    (``from trajhpc.job import train`` counts as ``job.train``, ``from trajhpc.job.train import x``
    as ``job.train``); a package's own ``__init__`` importing its modules is not counted."""
    modules = _modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trajhpc":
            base = node.module.removeprefix("trajhpc").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if sub in modules else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("trajhpc.") for a in node.names if a.name.startswith("trajhpc.")}
    return {m for m in found if m in modules and m != module}


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_top_level_holds_only_cli_spec_and_the_packages():
    loose = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert loose <= {"__init__.py", "cli.py", "spec.py"}
    assert folders == set(FOLDERS)


def test_every_module_belongs_to_a_package_in_the_order():
    assert {_package(m) for m in _modules()} - {"__init__"} <= set(ORDER)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_go_only_to_earlier_packages(module):
    if module == "__init__":
        return
    later = {
        dep for dep in _imports(_modules()[module], module=module)
        if RANK[_package(dep)] > RANK[_package(module)]
    }
    assert not later, f"{module} ({_package(module)}) imports from a later package: {sorted(later)}"


def test_no_import_circle():
    graph = {m: _imports(p, module=m) for m, p in _modules().items() if not p.name == "__init__.py"}
    graph = {m: deps & set(graph) for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_above_500_lines(module):
    lines = len(_modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines; split it along its concerns"


@pytest.mark.parametrize("folder", FOLDERS)
def test_each_package_says_what_it_is_and_exports_its_public_names(folder):
    package = importlib.import_module(f"trajhpc.{folder}")
    doc = (package.__doc__ or "").strip()
    assert doc and len(doc.splitlines()) <= 2, f"trajhpc/{folder}/__init__.py: a docstring of one or two lines"
    assert package.__all__, f"trajhpc/{folder}/__init__.py exports nothing"
    for name in package.__all__:
        assert getattr(package, name) is not None, f"trajhpc.{folder}.{name}"
