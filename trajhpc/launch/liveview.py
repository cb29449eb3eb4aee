"""Where the running jobs are, read from their own files: a live table on a terminal, plain lines otherwise.

A job says where it is in two files of its directory: ``state.json``'s ``activity``
(evaluating stage k, or training stage k over S optimizer steps) and ``train_log.jsonl``
(one line per step: loss, tokens/s; :mod:`trajhpc.jobdir.trainlog`). The view reads only those,
so it follows jobs that run as other processes (the local executor) or on other machines
(Slurm, over a shared file system). A job's ETA comes from its own pace since the view
first saw it, counting its evaluations and its trainings as equal parts of its work.

On a terminal the table is redrawn in place (rich Live); in a log file (not a terminal)
the view prints one line per event instead: a job that finished a stage, and with
``labels`` a job whose state changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from trajhpc.core.termtable import Col
from trajhpc.jobdir import trainlog
from trajhpc.jobdir.snapshot import JobFiles
from trajhpc.launch.status import Row, counts_line, format_duration, is_active, make_row, observe, render_table

TOK_S_STEPS = 8  # tokens/s: the mean over a stage's last steps


@dataclass(frozen=True)
class JobProgress:
    """Where one job is, from its state.json and the tail of its train_log.jsonl."""

    done: int | None = None  # stages evaluated (state.json "stage")
    n_stages: int | None = None
    stage: int | None = None  # the stage being trained or evaluated now (else ``done``)
    phase: str | None = None  # "training", "evaluating", or None
    step: int | None = None
    n_steps: int | None = None
    loss: float | None = None  # the last logged step's
    tokens_per_s: float | None = None  # the mean over the last logged steps of that stage
    fraction: float | None = None  # of the job's work: evaluations and trainings alike
    done_loss: float | None = None  # the same two of the last stage done (what a "stage k done" line says)
    done_tokens_per_s: float | None = None


def _last_of(entries: Sequence[Mapping[str, Any]], stage: int | None) -> tuple[float | None, float | None]:
    """(loss of the last logged step, mean tokens/s over the last steps) of ``stage`` (the last one's if None)."""
    if stage is None and entries:
        stage = entries[-1]["stage"]
    steps = [e for e in entries if e["stage"] == stage][-TOK_S_STEPS:]
    if not steps:
        return None, None
    return steps[-1]["loss"], sum(e["tokens_per_s"] for e in steps) / len(steps)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def fraction_done(n: int | None, done: int, phase: str | None, stage: int | None, step: int, n_steps: int) -> float | None:
    """Share of the job's 2n+1 parts done (evaluation of stage 0, then training and evaluation of each stage)."""
    if not n:
        return None
    if phase == "evaluating" and stage is not None:
        units = 2 * stage
    elif phase == "training" and stage is not None:
        units = 2 * stage - 1 + (min(step, n_steps) / n_steps if n_steps else 0.0)
    else:
        units = 2 * done + 1 if done else 0
    return max(0.0, min(1.0, units / (2 * n + 1)))


def progress_of(state: Mapping[str, Any] | None, complete: bool, entries: Sequence[Mapping[str, Any]]) -> JobProgress:
    """A job's progress from its state.json (None if absent), completeness and last train-log entries."""
    last = entries[-1] if entries else None
    loss, tok_s = _last_of(entries, None)
    n = _int(state.get("n_stages")) if state else None
    if complete:
        return JobProgress(done=n, n_stages=n, stage=n, loss=loss, tokens_per_s=tok_s, fraction=1.0,
                        done_loss=loss, done_tokens_per_s=tok_s)
    if not state:
        return JobProgress()
    done = _int(state.get("stage")) or 0
    done_loss, done_tok_s = _last_of(entries, done)
    activity = state.get("activity") if state.get("state") == "running" else None
    activity = activity if isinstance(activity, dict) else {}
    phase = activity.get("phase") if activity.get("phase") in ("training", "evaluating") else None
    stage = _int(activity.get("stage")) if phase else None
    n_steps = _int(activity.get("steps")) if phase == "training" else None
    step = last["step"] if phase == "training" and last and last["stage"] == stage else (0 if n_steps else None)
    return JobProgress(
        done=done, n_stages=n, stage=stage if stage is not None else done, phase=phase, step=step, n_steps=n_steps,
        loss=loss, tokens_per_s=tok_s, fraction=fraction_done(n, done, phase, stage, step or 0, n_steps or 0),
        done_loss=done_loss, done_tokens_per_s=done_tok_s,
    )


def read_progress(files: JobFiles) -> JobProgress:
    """The JobProgress of a job whose files were just read (its train log's tail read now)."""
    running = bool(files.state) and files.state.get("state") == "running"
    entries = trainlog.tail(files.run_dir) if running or files.complete else []
    return progress_of(files.state, files.complete, entries)


class EtaClock:
    """Remaining seconds of each job from its pace since first seen: (now - t0) x (1 - f) / (f - f0)."""

    def __init__(self) -> None:
        self.first: dict[str, tuple[float, float]] = {}

    def __call__(self, key: str, fraction: float | None, now: float) -> float | None:
        if fraction is None:
            return None
        t0, f0 = self.first.setdefault(key, (now, fraction))
        if fraction < f0:  # started over (a resumed job retrains its stage): measure afresh
            self.first[key] = (now, fraction)
            return None
        if fraction >= 1.0 or fraction - f0 < 1e-9 or now <= t0:
            return None
        return (now - t0) * (1.0 - fraction) / (fraction - f0)


def progress_columns(progress: Sequence[JobProgress], etas: Sequence[float | None]) -> list[Col]:
    """stage k/n, step (s/S, or ``eval``), loss, tok/s and ETA: the live view's columns."""

    def step(p: JobProgress) -> str:
        if p.phase == "training" and p.n_steps:
            return f"{p.step or 0}/{p.n_steps}"
        return "eval" if p.phase == "evaluating" else ""

    return [
        Col("stage", [f"{p.stage}/{p.n_stages}" if p.stage is not None and p.n_stages else "" for p in progress],
            blank_drops=True),
        Col("step", [step(p) for p in progress], keep=55, blank_drops=True),
        Col("loss", [f"{p.loss:.3f}" if p.loss is not None else "" for p in progress], keep=75, justify="right",
            blank_drops=True),
        Col("tok/s", [f"{p.tokens_per_s:,.0f}" if p.tokens_per_s is not None and p.phase == "training" else ""
                      for p in progress], keep=45, justify="right", blank_drops=True),
        Col("ETA", [format_duration(e) if e is not None else "" for e in etas], keep=65, justify="right",
            blank_drops=True),
    ]


# A view: (files, rows, width, extra columns for some rows) -> what to show (trajhpc.launch.statuscmd groups by study).
View = Callable[[Sequence[JobFiles], Sequence[Row], int, Callable[[Sequence[Row]], Sequence[Col]]], RenderableType]


class Board:
    """Shows jobs and their progress: rich Live on a terminal; plain event lines otherwise.

    ``labels``: print a line when a job's state changes (plain mode); ``tables``: print the
    table when the board starts and stops (plain mode).
    """

    def __init__(self, console: Console, title: str, *, labels: bool, tables: bool, clock: Callable[[], float] = time.monotonic):
        self.console, self.title, self.labels, self.tables, self.clock = console, title, labels, tables, clock
        self.eta = EtaClock()
        self.live: Live | None = None
        self.seen: dict[str, tuple[str, int | None]] = {}
        self.last: RenderableType | None = None
        self._done: dict[str, JobProgress] = {}  # complete jobs do not change: read once

    def __enter__(self) -> "Board":
        if self.console.is_terminal:
            self.live = Live(Text(""), console=self.console, auto_refresh=False, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
        elif self.tables and self.last is not None:
            self.console.print(self.last)

    def progress(self, files: JobFiles) -> JobProgress:
        if files.job_id in self._done:
            return self._done[files.job_id]
        p = read_progress(files)
        if files.complete:
            self._done[files.job_id] = p
        return p

    def show(self, files: Sequence[JobFiles], rows: Sequence[Row], progress: Sequence[JobProgress],
             view: View | None = None) -> None:
        """One refresh: the table (terminal), or the lines of what changed since the last one."""
        now = self.clock()
        by_id = {r.job_id: (p, self.eta(r.job_id, p.fraction, now)) for r, p in zip(rows, progress)}
        # The stage column says where a running job is; its detail ("2/4 stages") would repeat it.
        rows = [dataclasses.replace(r, detail="") if r.label == "running" and by_id[r.job_id][0].n_stages else r
                for r in rows]

        def extra(rs: Sequence[Row]) -> list[Col]:
            return progress_columns([by_id[r.job_id][0] for r in rs], [by_id[r.job_id][1] for r in rs])

        width = self.console.width
        if view is not None:
            self.last = view(files, rows, width, extra)
        else:
            table = render_table(rows, self.title, extra(rows), width=width, keep={"job id": 25})  # arm, seed, order say which
            self.last = Group(table, Text(counts_line(rows)))
        if self.live is not None:
            self.live.update(self.last, refresh=True)
            return
        if self.tables and not self.seen:
            self.console.print(self.last)
        for r in rows:
            self._events(r, *by_id[r.job_id])

    def _events(self, row: Row, p: JobProgress, eta: float | None) -> None:
        before = self.seen.get(row.job_id)
        self.seen[row.job_id] = (row.label, p.done)
        if before is None:
            return
        who = f"{row.job_id} {row.arm} seed {row.seed} {row.order}"
        if p.done and p.n_stages and before[1] is not None and p.done > before[1]:
            facts = [f"loss {p.done_loss:.3f}" if p.done_loss is not None else "",
                     f"{p.done_tokens_per_s:,.0f} tok/s" if p.done_tokens_per_s is not None else "",
                     f"ETA {format_duration(eta)}" if eta is not None else ""]
            facts = [f for f in facts if f]
            line = f"{who}: stage {p.done}/{p.n_stages} done" + (f" ({', '.join(facts)})" if facts else "")
            self.console.print(line, highlight=False, soft_wrap=True)
        if self.labels and row.label != before[0]:
            line = f"{who}: {row.label}" + (f" ({row.detail})" if row.detail else "")
            self.console.print(line, highlight=False, soft_wrap=True)


def watch_rows(
    console: Console,
    job_dirs: Callable[[], Sequence],
    title: str,
    interval: float,
    *,
    until_idle: bool,
    specs: Mapping[str, Mapping[str, Any]] | None = None,
    view: View | None = None,
) -> list[Row]:
    """Refresh every ``interval`` s until Ctrl-C, or (``until_idle``) until no job is active.

    ``status --watch`` and ``submit --wait`` on Slurm: the status columns and each job's progress.
    """
    rows: list[Row] = []
    with Board(console, title, labels=True, tables=True) as board:
        try:
            while True:
                files, sched = observe(job_dirs(), specs, strict=False)
                now = dt.datetime.now(dt.timezone.utc)
                rows = [make_row(f, sched.get(f.job_id), now) for f in files]
                board.show(files, rows, [board.progress(f) for f in files], view)
                if until_idle and not any(is_active(r) for r in rows):
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
    return rows
