"""Training-loss curves per arm from each job's ``train_log.jsonl``.

A job writes one JSON object per optimizer step (:mod:`trajhpc.jobdir.trainlog`, docs/CONTRACTS.md):
``{"stage": int, "step": int (1-based within the stage), "loss": float, "lr": float,
"tokens": int, "tokens_per_s": float}``. Reading is tolerant: a missing or damaged log
means no curve for that job, said in a note, never an exception. The log is read by
:func:`trajhpc.jobdir.trainlog.read_train_log` in its strict mode (the job's own reading skips a
line torn by a kill; a study's curves should not hide damage), through the bounded reader
(a FIFO or a huge file is refused, not read).

:func:`loss_frame` is pure: per arm and global step (the job's steps counted across its
stages), the mean training loss over the arm's units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl

from trajhpc.jobdir import trainlog
from trajhpc.jobdir.paths import TRAIN_LOG, FileProblem

LOG_SCHEMA = {
    "job_id": pl.String, "stage": pl.Int64, "step": pl.Int64, "loss": pl.Float64, "lr": pl.Float64,
    "tokens": pl.Int64, "tokens_per_s": pl.Float64,
}
LOSS_SCHEMA = {"arm": pl.String, "global_step": pl.Int64, "stage": pl.Int64, "loss": pl.Float64, "units": pl.Int64}


@dataclass
class TrainLogs:
    """The readable logs' rows (``LOG_SCHEMA``) and, per job without a curve, why (missing or damaged)."""

    rows: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LOG_SCHEMA))
    problems: dict[str, str] = field(default_factory=dict)  # job id -> reason
    missing: list[str] = field(default_factory=list)  # job ids without a train_log.jsonl


def read_train_log(job_dir: Path, n_stages: int) -> tuple[pl.DataFrame | None, str | None]:
    """One job's steps (``stage, step, loss, lr, tokens, tokens_per_s``, sorted), or None and why.

    A step logged twice (a job resumed from the checkpoint before it trains the stage
    again) keeps its last entry. Why is ``missing`` or ``train_log.jsonl: corrupt: ...``.
    """
    steps, why = _steps(job_dir, n_stages)
    if steps is None:
        return None, why
    return pl.DataFrame({k: [e[k] for e in steps] for k in trainlog.FIELDS},
                        schema={k: LOG_SCHEMA[k] for k in trainlog.FIELDS}), None


def _steps(job_dir: Path, n_stages: int) -> tuple[list[dict], None] | tuple[None, str]:
    try:
        entries = trainlog.read_train_log(job_dir, strict=True, n_stages=n_stages)
    except FileProblem as problem:
        return None, "missing" if problem.kind == "missing" else str(problem)
    if not entries:
        return None, f"{TRAIN_LOG}: corrupt: no steps logged"
    rows = {(e["stage"], e["step"]): e for e in entries}
    return [rows[k] for k in sorted(rows)], None


def read_train_logs(jobs: Sequence[tuple[str, Path, int]]) -> TrainLogs:
    """The logs of ``(job id, job dir, stages)`` jobs; never raises for a bad or missing log."""
    logs = TrainLogs()
    # One frame built from columns: a frame per job cost a 10,000-job study two seconds.
    cols: dict[str, list] = {k: [] for k in LOG_SCHEMA}
    for job_id, job_dir, n_stages in jobs:
        steps, why = _steps(job_dir, n_stages)
        if steps is not None:
            cols["job_id"].extend([job_id] * len(steps))
            for key in trainlog.FIELDS:
                cols[key].extend([e[key] for e in steps])
        elif why == "missing":
            logs.missing.append(job_id)
        else:
            logs.problems[job_id] = why or "unreadable"
    logs.rows = pl.DataFrame(cols, schema=LOG_SCHEMA)
    return logs


def loss_frame(rows: pl.DataFrame, units: pl.DataFrame) -> pl.DataFrame:
    """``arm, global_step, stage, loss, units``: per arm and global step, the mean loss over units.

    A unit's global step counts its steps across stages (stage 2's step 1 follows stage 1's
    last step); ``stage`` is the stage most units are in at that step (the smallest on a tie).
    """
    if rows.height == 0 or units.height == 0:
        return pl.DataFrame(schema=LOSS_SCHEMA)
    steps = rows.join(units.select("job_id", "arm"), on="job_id", how="inner")
    lengths = steps.group_by("job_id", "stage").agg(pl.col("step").max().alias("_len")).sort("job_id", "stage")
    offsets = lengths.with_columns(
        (pl.col("_len").cum_sum().over("job_id") - pl.col("_len")).alias("_offset")
    ).drop("_len")
    steps = steps.join(offsets, on=["job_id", "stage"]).with_columns(
        (pl.col("step") + pl.col("_offset")).alias("global_step")
    )
    return (
        steps.group_by("arm", "global_step")
        .agg(
            pl.col("stage").mode().min().alias("stage"),
            pl.col("loss").mean(),
            pl.col("job_id").n_unique().cast(pl.Int64).alias("units"),
        )
        .select(*LOSS_SCHEMA)
        .cast(LOSS_SCHEMA)
        .sort("arm", "global_step")
    )


def loss_notes(logs: TrainLogs, units: int) -> list[str]:
    """What the loss curves leave out: jobs without a log, damaged logs (the first named)."""
    if units == 0:
        return []
    if len(logs.missing) == units:
        return [f"no loss curves: none of the {units} jobs has {TRAIN_LOG} (jobs of earlier trajhpc versions "
                "do not write it)."]
    out = []
    if logs.missing:
        out.append(f"loss curves leave out {len(logs.missing)} of {units} jobs without {TRAIN_LOG}.")
    if logs.problems:
        job, why = sorted(logs.problems.items())[0]
        more = f" (and {len(logs.problems) - 1} more)" if len(logs.problems) > 1 else ""
        out.append(f"loss curves leave out {len(logs.problems)} of {units} jobs whose log is damaged: "
                   f"job {job}: {why}{more}.")
    return out
