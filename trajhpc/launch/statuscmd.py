"""``trajhpc status``: the status table of a manifest's jobs, or of every job under a run directory.

A manifest's jobs are shown in its grid's order (arms as the manifest lists them). A run
directory may hold several studies: one table per study (``<run root>/<study>/<job id>``),
studies by name, and inside each the jobs by arm (in the order of the manifest the study
was last submitted from, when it can still be read), seed and order.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console, Group, RenderableType
from rich.text import Text

from trajhpc.core.errors import TrajhpcError
from trajhpc.core.termtable import Col
from trajhpc.jobdir.paths import find_job_dirs
from trajhpc.jobdir.snapshot import JobFiles
from trajhpc.launch.liveview import watch_rows
from trajhpc.launch.status import Row, counts_line, make_row, observe, render_table


@dataclass(frozen=True)
class Study:
    """One table of the status view: a study's label and its rows, in display order."""

    label: str
    rows: list[Row]


def _manifest_arms(files: Sequence[JobFiles]) -> list[str]:
    """The arms of the manifest a study was submitted from (its record names it, and the ``--set``
    overrides it was read with), in its order; [] when no record names one that can still be read.
    Never blocks: regular files only."""
    sources = {
        (f.record["manifest"], _overrides(f.record))
        for f in files if f.record and isinstance(f.record.get("manifest"), str)
    }
    for path, overrides in sorted(sources):
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        arms = _arms_of(path, st.st_mtime_ns, st.st_size, overrides) if stat.S_ISREG(st.st_mode) else ()
        if arms:
            return list(arms)
    return []


def _overrides(record: dict[str, Any]) -> tuple[str, ...]:
    """The ``--set`` texts a submission record lists (none in records from before ``--set``, or damaged)."""
    value = record.get("overrides")
    return tuple(value) if isinstance(value, list) and all(isinstance(o, str) for o in value) else ()


@functools.lru_cache(maxsize=64)
def _arms_of(path: str, mtime_ns: int, size: int, overrides: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A manifest file's arms (read once per version of the file: ``status --watch`` asks often)."""
    from trajhpc.study.manifest import arm_name, load_manifest

    try:
        manifest = load_manifest(path, overrides)
    except (TrajhpcError, OSError, ValueError):
        return ()
    return tuple(arm_name(c, manifest.data.tool_docs) for c in manifest.conditions)


def _seed_key(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.isdigit() else (1, seed)


def order_rows(rows: Sequence[Row], arms: Sequence[str]) -> list[Row]:
    """Rows by arm (``arms`` first, in that order, then the others by name), seed, order and job id."""
    rank = {arm: i for i, arm in enumerate(arms)}
    return sorted(rows, key=lambda r: (rank.get(r.arm, len(rank)), r.arm, _seed_key(r.seed), r.order, r.job_id))


def group_studies(root: Path, files: Sequence[JobFiles], rows: Sequence[Row]) -> list[Study]:
    """The rows of the jobs under ``root``, one Study per folder holding jobs, by label."""
    by_parent: dict[Path, list[int]] = {}
    for i, f in enumerate(files):
        by_parent.setdefault(f.run_dir.parent, []).append(i)
    studies = []
    for parent, members in by_parent.items():
        try:
            label = str(parent.resolve().relative_to(root.resolve()))
        except (ValueError, OSError):
            label = str(parent)
        if label == ".":  # the jobs sit right in the folder asked about
            label = root.resolve().name
        arms = _manifest_arms([files[i] for i in members])
        studies.append(Study(label, order_rows([rows[i] for i in members], arms)))
    return sorted(studies, key=lambda s: s.label)


def render_studies(
    studies: Sequence[Study], title: str, width: int, extra: Callable[[Sequence[Row]], Sequence[Col]] | None = None
) -> RenderableType:
    """One table per study (titled ``study <label>``), each followed by its counts; a total line
    when there are several. ``extra`` adds columns to each table, given its rows."""
    if len(studies) == 1:
        (study,) = studies
        table = render_table(study.rows, title, extra(study.rows) if extra else (), width=width)
        return Group(table, Text(counts_line(study.rows)))
    parts: list[RenderableType] = []
    for study in studies:
        parts.append(render_table(study.rows, f"study {study.label}", extra(study.rows) if extra else (), width=width))
        parts.append(Text(counts_line(study.rows)))
    parts.append(Text(f"{title}: {counts_line(r for s in studies for r in s.rows)}"))
    return Group(*parts)


def _target_dirs(
    target: Path | None, run_root: Path | None, overrides: Sequence[str] = ()
) -> tuple[Callable[[], list[Path]], str, dict[str, dict[str, Any]], Path | None]:
    """(job directory lister, title, specs by job id, the run directory to group by study, or None
    for a manifest) for a manifest, a run directory, or the default run root."""
    target = target if target is not None else (run_root or Path("jobs"))
    if target.is_file() or target.suffix in (".yaml", ".yml"):
        from trajhpc.study.grid import expand
        from trajhpc.study.manifest import load_manifest

        manifest = load_manifest(target, overrides)
        jobs = expand(manifest, run_root)
        dirs = [job.run_dir for job in jobs]
        return (lambda: dirs), f"study {manifest.study} ({target})", {j.job_id: j.spec.to_dict() for j in jobs}, None
    if not target.is_dir():
        raise TrajhpcError(f"{target}: no such manifest or run directory")
    if overrides:
        raise TrajhpcError(f"--set applies to a manifest; {target} is a run directory")
    return (lambda: find_job_dirs(target)), str(target), {}, target


def status_view(
    files: Sequence[JobFiles], rows: Sequence[Row], root: Path | None, title: str, width: int,
    extra: Callable[[Sequence[Row]], Sequence[Col]] | None = None,
) -> RenderableType:
    """What to print: a manifest's jobs in grid order, a run directory's grouped by study."""
    studies = group_studies(root, files, rows) if root is not None and rows else [Study(title, list(rows))]
    if root is not None and len(studies) == 1 and rows:
        title = f"study {studies[0].label} ({title})"
    return render_studies(studies, title, width, extra)


def status_command(
    console: Console, target: Path | None, *, run_root: Path | None, watch: bool, interval: float,
    overrides: Sequence[str] = (),
) -> None:
    """``trajhpc status``: a table per study and counts per state (a manifest's grid with the ``--set``
    ``overrides``); ``--watch`` refreshes until Ctrl-C."""
    lister, title, specs, root = _target_dirs(target, run_root, overrides)
    if watch:
        if interval <= 0:
            raise TrajhpcError(f"--interval must be positive, got {interval}")
        view = None
        if root is not None:
            view = lambda files, rows, width, extra: status_view(files, rows, root, title, width, extra)  # noqa: E731
        watch_rows(console, lister, title, interval, until_idle=False, specs=specs, view=view)
        return
    files, sched = observe(lister(), specs, strict=False)
    now = dt.datetime.now(dt.timezone.utc)
    rows = [make_row(f, sched.get(f.job_id), now) for f in files]
    console.print(status_view(files, rows, root, title, console.width))
