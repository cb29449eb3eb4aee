"""Where every job of a study stands: the scheduler's view plus what its directory says.

Pure core: ``display_state`` (state.json, metrics complete?, scheduler state -> label
and detail) and ``decide`` (the resubmission rule). I/O at the edges: reading job
directories, one ``sacct`` call for all recorded Slurm ids (``squeue`` for what it
lacks), one row per job, and the table that fits the console (:mod:`trajhpc.core.termtable`).
The ``status`` command is :mod:`trajhpc.launch.statuscmd`; the live view :mod:`trajhpc.launch.liveview`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from rich.table import Table
from rich.text import Text

from trajhpc.core.errors import TrajhpcError, last_line
from trajhpc.core.termtable import Col, fit_table
from trajhpc.jobdir.paths import FileProblem, open_regular
from trajhpc.jobdir.snapshot import JobFiles, read_job_dir
from trajhpc.launch.slurmquery import GONE, SlurmInfo, ask_slurm
from trajhpc.launch.submitit_adapter import LOCAL_CONTROLLER_MODULE
from trajhpc.spec import spec_from_dict

# Slurm job states (squeue/sacct names) grouped by what they mean for a job.
PENDING_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED", "STOPPED"}
)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
ACTIVE_STATES = PENDING_STATES | RUNNING_STATES
# Slurm could not be asked (status only: submit refuses to guess).
UNKNOWN = "UNKNOWN"

# "waiting": a job of a local run waiting for a free slot.
LABELS = ("done", "running", "pending", "waiting", "failed", "interrupted", "cancelled", "corrupt", "unreadable", "not submitted")
_STYLE = {
    "done": "green", "running": "cyan", "pending": "yellow", "waiting": "yellow", "failed": "red", "interrupted": "magenta",
    "cancelled": "magenta", "corrupt": "bold red", "unreadable": "bold red",
}

Action = Literal["skip", "leave", "submit"]


# ---------------------------------------------------------------- pure rules


def decide(complete: bool, scheduler_state: str | None) -> Action:
    """What ``trajhpc submit`` does with a job: skip it (done), leave it (queued or running), or submit it.

    ``scheduler_state``: None when never submitted, a Slurm state, ``GONE`` or ``UNKNOWN``.
    Everything not done and not active (failed, cancelled, timed out, lost, new) is submitted;
    a job whose state is unknown is left alone rather than risk running it twice.
    """
    if complete:
        return "skip"
    if scheduler_state in ACTIVE_STATES or scheduler_state == UNKNOWN:
        return "leave"
    return "submit"


def display_state(state: Mapping[str, Any] | None, complete: bool, scheduler_state: str | None) -> tuple[str, str]:
    """(label, detail) shown for a job.

    ``state`` is its state.json (None if absent), ``complete`` whether metrics.json says
    complete, ``scheduler_state`` as in ``decide``. Labels: done, running, pending,
    failed, interrupted (Ctrl-C; resumes when started again), cancelled, not submitted.
    """
    if complete:
        return "done", ""
    k, n = (state.get("stage", 0), state.get("n_stages")) if state else (0, None)
    progress = f"{k}/{n} stages" if n else ""
    job_state = state.get("state") if state else None
    if scheduler_state in PENDING_STATES:
        return "pending", f"resumes after {progress}" if k else ""
    if scheduler_state in RUNNING_STATES:
        return "running", progress or "starting"
    if scheduler_state in (None, UNKNOWN):  # not submitted by trajhpc (maybe run by hand), or Slurm unreachable
        if job_state is None:
            return ("not submitted", "") if scheduler_state is None else ("pending", "Slurm not reachable")
        if job_state == "running":
            return "running", progress
        if job_state == "failed":
            return "failed", last_line(state.get("error")) if state else ""
        if job_state == "interrupted":
            return "interrupted", f"after {progress}" if progress else ""
        return "failed", "state.json says done but metrics.json is not complete"
    # Submitted, and the scheduler says it ended (or no longer knows it) without complete metrics.
    if scheduler_state == "CANCELLED":
        return "cancelled", progress
    if job_state == "failed" and state and state.get("error"):
        return "failed", last_line(state["error"])
    if job_state == "interrupted":
        return "interrupted", f"after {progress}" if progress else ""
    reason = {GONE: "ended without finishing", "COMPLETED": "exited without finishing"}.get(
        scheduler_state, scheduler_state
    )
    return "failed", f"{reason} after {progress}" if progress else reason


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def elapsed_seconds(state: Mapping[str, Any] | None, running: bool, now: dt.datetime) -> float | None:
    """Seconds from ``started`` to ``ended`` (or to now while running, else to the last update)."""
    if not state:
        return None
    start = _parse_time(state.get("started"))
    end = _parse_time(state.get("ended")) or (now if running else _parse_time(state.get("updated")))
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def format_duration(seconds: float | None) -> str:
    """``42s``, ``5m03s``, ``2h07m``; empty for None."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# ---------------------------------------------------------------- schedulers (I/O)


def local_alive(pid: int, folder: str) -> bool:
    """Is this submitit local controller still running (and not a reused pid)?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return (folder.encode() if folder else LOCAL_CONTROLLER_MODULE.encode()) in cmdline


def never_started(job: JobFiles) -> bool:
    """No state.json and no log: the task never ran (Slurm creates the log when it starts)."""
    stderr = (job.record or {}).get("stderr")
    return job.state is None and not (stderr and os.path.exists(stderr))


def log_tail(path: str | os.PathLike[str] | None, width: int = 120, window: int = 64 * 1024) -> str:
    """Last non-empty line of a log file (its last ``window`` bytes); empty when unreadable."""
    if not path:
        return ""
    try:
        with open_regular(path) as f:  # a FIFO in place of the log must not hang status
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - window))
            text = f.read().decode("utf-8", errors="replace")
    except (OSError, FileProblem):
        return ""
    return last_line(text, width)


def scheduler_states(jobs: Sequence[JobFiles], strict: bool = True) -> dict[str, str]:
    """trajhpc job id -> scheduler state (Slurm state, RUNNING/GONE for local) for jobs with a record.

    When Slurm can't be asked: TrajhpcError if ``strict``, else ``UNKNOWN`` for its jobs.
    """
    slurm_ids = {j.job_id: str(j.record["slurm_job_id"]) for j in jobs if j.record and j.record.get("slurm_job_id")}
    seen: set[str] = set()
    try:
        slurm: dict[str, SlurmInfo] | None
        slurm, seen = ask_slurm(slurm_ids.values())
    except TrajhpcError:
        if strict:
            raise
        slurm = None
    out: dict[str, str] = {}
    for job in jobs:
        if job.job_id in slurm_ids and slurm is None:
            out[job.job_id] = UNKNOWN
        elif job.job_id in slurm_ids:
            info = slurm.get(slurm_ids[job.job_id])
            expected = job.record.get("slurm_job_name") if job.record else None
            # Slurm ids restart when a cluster's state is wiped: another job's id is not ours.
            reused = info is not None and bool(info.name) and bool(expected) and info.name != expected
            if info is None and slurm_ids[job.job_id].split("_")[0] in seen and never_started(job):
                # Slurm drops a pending array task that is cancelled, while it still
                # lists the array's other tasks: that is the only way to lose just one.
                out[job.job_id] = "CANCELLED"
            else:
                out[job.job_id] = GONE if info is None or reused else info.state
        elif job.record and job.record.get("local_pid"):
            alive = local_alive(job.record["local_pid"], str(job.record.get("submitit_folder") or ""))
            out[job.job_id] = "RUNNING" if alive else GONE
    return out


# ---------------------------------------------------------------- rows and rendering


@dataclass(frozen=True)
class Row:
    """One line of the status table."""

    job_id: str
    arm: str
    seed: str
    order: str
    slurm: str
    label: str
    detail: str
    elapsed: str


def _arm(spec: Mapping[str, Any] | None) -> str:
    """The arm as JobSpec names it; ``?`` for a missing or invalid spec (status never fails on one)."""
    if not spec:
        return "?"
    try:
        return spec_from_dict(spec).arm
    except TrajhpcError:
        return "?"


def short_order(order: Sequence[str]) -> str:
    """``care-appointments, medication-treatment`` -> ``ca>mt``: block initials, so four
    blocks fit in a terminal column; full names when initials would be ambiguous."""
    initials = ["".join(part[:1] for part in re.split(r"[-_\s]+", block) if part) or block for block in order]
    if len(set(initials)) < len(set(order)):
        initials = list(order)
    return ">".join(initials)


def problem_text(problems: Sequence[FileProblem], run_dir: Path) -> str:
    """``metrics.json: not valid JSON at line 1 (...)``: the first problem, and how many more."""
    first = problems[0]
    if first.path == run_dir:  # the folder itself
        text = first.reason
    else:
        text = f"{first.path.name}: {first.reason}" if first.kind == "corrupt" else str(first)
    return text + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def make_row(job: JobFiles, scheduler_state: str | None, now: dt.datetime) -> Row:
    """The table row of a job (given its files and scheduler state; reads a failed job's log)."""
    label, detail = display_state(job.state, job.complete, scheduler_state)
    if job.problems:
        label = "unreadable" if job.problems[0].kind == "unreadable" else "corrupt"
        detail = problem_text(job.problems, job.run_dir)
    elif label == "failed" and job.state is None and job.record:
        # Died before the job code wrote state.json (the container did not start, an
        # import failed): the task's own stderr says why.
        detail = log_tail(job.record.get("stderr")) or detail
    spec = job.spec or {}
    is_slurm = bool(job.record and job.record.get("slurm_job_id"))
    order = spec.get("order")
    valid_order = isinstance(order, (list, tuple)) and all(isinstance(b, str) for b in order)
    return Row(
        job_id=job.job_id,
        arm=_arm(job.spec),
        seed=str(spec.get("seed", "?")),
        order=(short_order(order) if valid_order else "") or "?",
        slurm={GONE: "not found", UNKNOWN: "?"}.get(scheduler_state or "", scheduler_state or "") if is_slurm else "–",
        label=label,
        detail=detail,
        elapsed=format_duration(elapsed_seconds(job.state, label == "running", now)),
    )


def counts_line(rows: Iterable[Row]) -> str:
    """``8 jobs: 3 done · 1 running · 4 pending`` (labels in a fixed order)."""
    counts = Counter(r.label for r in rows)
    parts = [f"{counts[label]} {label}" for label in LABELS if counts[label]]
    total = sum(counts.values())
    return f"{total} job{'' if total == 1 else 's'}: " + (" · ".join(parts) if parts else "none")


def status_columns(rows: Sequence[Row], keep: Mapping[str, int] | None = None) -> list[Col]:
    """The status table's columns, each with how it gives way at a narrow width (trajhpc.core.termtable):
    blank slurm/detail/elapsed columns go, then slurm, elapsed, order, job id, seed; detail folds.
    ``keep`` overrides a column's value (the live view needs the job id least)."""
    value = {"slurm": 20, "elapsed": 30, "order": 35, "job id": 40, "seed": 60, "detail": 70} | dict(keep or {})
    return [
        Col("job id", [r.job_id for r in rows], keep=value["job id"]),
        Col("arm", [r.arm for r in rows]),
        Col("seed", [r.seed for r in rows], keep=value["seed"]),
        Col("order", [r.order for r in rows], keep=value["order"]),
        Col("slurm", [r.slurm for r in rows], keep=value["slurm"], blank_drops=True),
        Col("state", [Text(r.label, style=_STYLE.get(r.label, "")) for r in rows]),
        Col("detail", [r.detail for r in rows], keep=value["detail"], fold=True, blank_drops=True),
        Col("elapsed", [r.elapsed for r in rows], keep=value["elapsed"], blank_drops=True),
    ]


def render_table(
    rows: Sequence[Row], title: str, extra: Sequence[Col] = (), *, width: int = 80, keep: Mapping[str, int] | None = None
) -> Table:
    """The rows as a table at most ``width`` cells wide; ``extra`` columns follow the status columns."""
    return fit_table([*status_columns(rows, keep), *extra], width, title=title)


def observe(
    job_dirs: Sequence[Path], specs: Mapping[str, Mapping[str, Any]] | None = None, strict: bool = True
) -> tuple[list[JobFiles], dict[str, str]]:
    """Read every job directory and ask the schedulers once; ``specs`` (by job id) stand in for missing spec.json."""
    specs = specs or {}
    files = [read_job_dir(d, specs.get(d.name)) for d in job_dirs]
    return files, scheduler_states(files, strict)


def collect_rows(
    job_dirs: Sequence[Path], specs: Mapping[str, Mapping[str, Any]] | None = None, now: dt.datetime | None = None
) -> list[Row]:
    """One Row per job directory, in the given order (Slurm unreachable: its jobs show state UNKNOWN)."""
    files, sched = observe(job_dirs, specs, strict=False)
    now = now or dt.datetime.now(dt.timezone.utc)
    return [make_row(f, sched.get(f.job_id), now) for f in files]


def is_active(row: Row) -> bool:
    return row.label in ("running", "pending", "waiting")
