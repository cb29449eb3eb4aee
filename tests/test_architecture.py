"""The shape docs/ARCHITECTURE.md promises: floors that import only downwards, no import
circle, no module above 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trajhpc"
MAX_LINES = 500

FLOORS = {
    0: {"errors", "atomic", "locks", "bulk", "provenance", "yamlread", "fielderrors", "submitit_adapter", "termtable",
        "quiet"},
    1: {"spec", "data", "scoring", "baselines", "batching", "train", "checkpoint", "models", "container", "slurmclient",
        "jobdir", "jobdocs", "trainlog", "tinycorpus"},  # models pre-trains the tiny model with the training loop
    2: {"analysis", "manifest", "grid", "data.inspect"},  # `trajhpc data inspect` reads a manifest
    3: {"evaluate", "merged", "recipe", "job", "progress", "cost"},
    4: {"status", "slurmquery", "submission", "liveview", "statusview", "localrun", "launch"},
    5: {"losscurves", "jobrecords", "results", "stagetables", "stats", "itemstats", "factorial", "itemtables", "tables",
        "report", "plots",
        "aggregate"},
    6: {"cli"},
}
FLOOR = {name: floor for floor, names in FLOORS.items() for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__") or "__init__"] = path
    return out


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """trajhpc modules imported by the file (``from trajhpc import x`` counts as ``x``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # include `if TYPE_CHECKING:` blocks: a typing-only circle is still a circle
        nodes = nodes + [n for node in tree.body if isinstance(node, ast.If) for n in node.body]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trajhpc":
            base = node.module.removeprefix("trajhpc").lstrip(".")
            for alias in node.names:
                found.add(f"{base}.{alias.name}".lstrip(".") if not base or base == "data" else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("trajhpc.") for a in node.names if a.name.startswith("trajhpc.")}
    modules = _modules()
    return {m if m in modules else m.rsplit(".", 1)[0] for m in found} & set(modules)


def _top(name: str) -> str:
    """The FLOORS entry a module belongs to: itself when listed (``data.inspect``), else its package."""
    return name if name in FLOOR else name.split(".")[0]


def test_every_module_has_a_floor():
    assert {_top(m) for m in _modules()} - {"__init__"} == set(FLOOR)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_go_only_down_or_across(module):
    if _top(module) not in FLOOR:
        return
    up = {
        dep for dep in _imports(_modules()[module], top_level_only=False)
        if _top(dep) in FLOOR and FLOOR[_top(dep)] > FLOOR[_top(module)]
    }
    assert not up, f"{module} (floor {FLOOR[_top(module)]}) imports from a floor above: {sorted(up)}"


def test_no_import_circle():
    graph = {m: _imports(p, top_level_only=True) - {m} for m, p in _modules().items()}
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
