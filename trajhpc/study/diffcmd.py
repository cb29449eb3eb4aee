"""``trajhpc diff A B``: find the two jobs (ids or folders) or manifests, compare them, print the tables.

Exit status as diff(1): 0 when they are the same, ``EXIT_DIFFERENT`` when they differ, 2 for
a mistake in the input (a job id found nowhere, a manifest that does not validate).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from trajhpc.core.errors import TrajhpcError
from trajhpc.core.termtable import Col, fit_table
from trajhpc.jobdir.paths import SPEC, FileProblem, find_job_dirs, read_json_object
from trajhpc.study.diff import (
    GRID_KEYS,
    MISSING,
    Difference,
    GridDiff,
    diff_grids,
    diff_mappings,
)

# diff(1)'s status for "they differ"; trajhpc.cli documents every exit status.
EXIT_DIFFERENT = 1
_MANIFEST_SUFFIXES = (".yaml", ".yml")
_ID_MIN = 4  # a shorter id prefix would match too much to mean one job


def is_manifest(target: str) -> bool:
    """Whether a target names a manifest file (by its suffix, as ``status`` and ``aggregate`` tell)."""
    return Path(target).suffix in _MANIFEST_SUFFIXES


def find_job(target: str, run_root: Path) -> Path:
    """The job directory ``target`` names: a folder holding spec.json, or a job id (or a unique
    prefix of one, at least 4 characters) under ``run_root``."""
    path = Path(target)
    if path.is_dir():
        if not (path / SPEC).exists():
            raise TrajhpcError(f"{path}: not a job directory (no {SPEC})")
        return path
    if len(target) < _ID_MIN or "/" in target:
        raise TrajhpcError(f"{target}: no such job directory, job id or manifest")
    matches = [d for d in find_job_dirs(run_root) if d.name.startswith(target)] if run_root.is_dir() else []
    if not matches:
        raise TrajhpcError(f"{target}: no job with this id under {run_root} (--run-root names where to look)")
    if len({d.name for d in matches}) > 1:
        names = ", ".join(sorted({d.name for d in matches})[:4])
        raise TrajhpcError(f"{target}: several jobs under {run_root} start with it ({names}); give more of the id")
    if len(matches) > 1:  # one id in two studies: the same spec, but say which folder is compared
        raise TrajhpcError(
            f"{target}: job {matches[0].name} is in {len(matches)} folders under {run_root} "
            f"({', '.join(str(m.parent) for m in matches[:3])}); name the job directory"
        )
    return matches[0]


def read_spec(job_dir: Path) -> dict[str, Any]:
    """A job directory's spec.json as written (fields at their default are absent)."""
    try:
        spec = read_json_object(job_dir / SPEC)
    except FileProblem as problem:
        raise TrajhpcError(f"{job_dir / SPEC}: {problem.kind}: {problem.reason}") from None
    if spec is None:
        raise TrajhpcError(f"{job_dir / SPEC}: missing")
    return spec


# ---------------------------------------------------------------- rendering


def show(value: Any) -> str:
    """A value as the table shows it: text as is, everything else as compact JSON, missing as ``–``."""
    if value is MISSING:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value, separators=(", ", ": "))


def differences_table(diffs: Sequence[Difference], width: int, title: str | None = None) -> RenderableType:
    """field | A | B, one row per difference, no wider than ``width``."""
    keys = Col("field", [d.key for d in diffs], fold=True, fold_min=max(14, (width - 10) // 3))
    # The two sides share what the keys leave evenly, so neither is squeezed to a sliver.
    half = max(12, (width - 10 - keys.minimum) // 2)
    columns = [
        keys,
        Col("A", [show(d.a) for d in diffs], fold=True, fold_min=half),
        Col("B", [show(d.b) for d in diffs], fold=True, fold_min=half),
    ]
    return fit_table(columns, width, title=title)


def _values(values: Sequence[Any]) -> str:
    # An order is a tuple of blocks, one per line with " > " between, so that it wraps between blocks.
    return "\n".join(" > ".join(v) if isinstance(v, tuple) else show(v) for v in values) or "–"


def grid_table(d: GridDiff, width: int) -> RenderableType:
    """grid axis | only in A | only in B (arms, seeds, orders)."""
    axes = ["arms", "seeds", "orders"]
    half = max(12, (width - 16) // 2)  # the two sides share the width evenly before either grows
    columns = [
        Col("grid", axes),
        Col("only in A", [_values(d.only_a[a]) for a in axes], fold=True, fold_min=half),
        Col("only in B", [_values(d.only_b[a]) for a in axes], fold=True, fold_min=half),
    ]
    return fit_table(columns, width)


def render_jobs(a: tuple[str, Path], b: tuple[str, Path], diffs: Sequence[Difference], width: int) -> RenderableType:
    """Two jobs: which is A and B, the fields that differ, and a count."""
    lines = [Text(f"A: job {a[0]} ({a[1]})"), Text(f"B: job {b[0]} ({b[1]})")]
    if not diffs:
        return Group(*lines, Text("the specs are the same" + (" (one job)" if a[0] == b[0] else "")))
    noun = "field differs" if len(diffs) == 1 else "fields differ"
    note = " (–: not in spec.json, the default)" if any(MISSING in (d.a, d.b) for d in diffs) else ""
    return Group(*lines, differences_table(diffs, width), Text(f"{len(diffs)} spec {noun}{note}"))


def render_grids(a: tuple[str, int], b: tuple[str, int], d: GridDiff, width: int) -> RenderableType:
    """Two manifests: which is A and B, grid axes only one has, job counts, the settings that differ."""
    parts: list[RenderableType] = [Text(f"A: {a[0]} ({_jobs(a[1])})"), Text(f"B: {b[0]} ({_jobs(b[1])})")]
    if any(d.only_a.values()) or any(d.only_b.values()):
        parts.append(grid_table(d, width))
    parts.append(Text(
        f"jobs: {len(d.shared_jobs)} in both, {len(d.jobs_only_a)} only in A, {len(d.jobs_only_b)} only in B"
    ))
    if d.settings:
        noun = "setting differs" if len(d.settings) == 1 else "settings differ"
        parts.append(differences_table(d.settings, width))
        notes = []
        if any(s.key.startswith("spec.") for s in d.settings):
            notes.append("spec.: what every job's spec shares")
        if any(MISSING in (s.a, s.b) for s in d.settings):
            notes.append("–: not set, or not the same in every job")
        parts.append(Text("\n".join([f"{len(d.settings)} {noun}", *notes])))
    if d.equal:
        parts.append(Text("the manifests give the same jobs with the same settings"))
    return Group(*parts)


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


# ---------------------------------------------------------------- the command


def diff_command(console: Console, a: str, b: str, *, run_root: Path) -> int:
    """``trajhpc diff``: print what differs; the exit status is 0 when nothing does, else ``EXIT_DIFFERENT``."""
    kinds = [is_manifest(a), is_manifest(b)]
    if kinds[0] != kinds[1]:
        manifest, other = (a, b) if kinds[0] else (b, a)
        raise TrajhpcError(f"diff compares two jobs or two manifests: {manifest} is a manifest, {other} is not")
    if all(kinds):
        from trajhpc.study.grid import expand
        from trajhpc.study.manifest import load_manifest

        ma, mb = load_manifest(a), load_manifest(b)
        ja, jb = expand(ma), expand(mb)
        # The grid's own keys are compared through the expanded jobs (and their unions would not dump cleanly).
        plain = {"mode": "json", "exclude": set(GRID_KEYS)}
        d = diff_grids(ma.model_dump(**plain), ja, mb.model_dump(**plain), jb)
        console.print(render_grids((a, len(ja)), (b, len(jb)), d, console.width), highlight=False)
        return 0 if d.equal else EXIT_DIFFERENT
    da, db = find_job(a, run_root), find_job(b, run_root)
    diffs = diff_mappings(read_spec(da), read_spec(db))
    console.print(render_jobs((da.name, da), (db.name, db), diffs, console.width), highlight=False)
    return EXIT_DIFFERENT if diffs else 0
