"""Running a study's jobs on this machine: submitit's local executor, a few jobs at a time.

The local executor has no queue, so trajhpc keeps the slots busy itself: CPU jobs share
the cores (and memory), GPU jobs get disjoint visible GPUs. Meanwhile every job of the
run is on a :class:`trajhpc.launch.liveview.Board`: a live table on a terminal (stage, step,
loss, tok/s, ETA per job), a line per finished stage in a log file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import subprocess
import time
from collections import deque
from typing import Any, Sequence

from rich.console import Console

from trajhpc.core.errors import TrajhpcError, last_line
from trajhpc.jobdir.snapshot import JobFiles, read_job_dir
from trajhpc.launch.liveview import Board, JobProgress
from trajhpc.launch.status import GONE, Row, display_state, make_row
from trajhpc.launch.submission import Submitter, jobs_phrase, write_record
from trajhpc.study.grid import GridJob
from trajhpc.study.manifest import Resources

POLL_S = 1.0


def local_slots(
    resources: Resources, cpu_count: int, gpu_ids: Sequence[int], memory_gb: float = float("inf")
) -> list[tuple[int, ...]]:
    """GPU ids of each concurrent local job: CPU jobs share the cores (and memory), GPU jobs get disjoint GPUs."""
    limit = resources.array_parallelism
    if memory_gb != float("inf"):
        limit = min(limit, max(1, int(memory_gb // resources.mem_gb)))
    if resources.gpus_per_node == 0:
        return [()] * max(1, min(limit, cpu_count // resources.cpus_per_task))
    g = resources.gpus_per_node
    groups = [tuple(gpu_ids[i : i + g]) for i in range(0, len(gpu_ids) - g + 1, g)]
    if not groups:
        raise TrajhpcError(
            f"resources.gpus_per_node asks for {g} GPU(s) per job but {len(gpu_ids)} are visible here; "
            "use the Slurm executor or a CPU manifest (gpus_per_node: 0)"
        )
    return groups[:limit]




def _visible_gpus() -> list[int]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return list(range(sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))))


def _failure_line(exc: BaseException | None) -> str:
    """The remote exception line of a submitit FailedJobError (its trace sits between dashed rules)."""
    text = str(exc or "")
    parts = text.split("-" * 22)
    return last_line(parts[1] if len(parts) > 2 else text, width=400)


def run_local(
    console: Console,
    jobs: Sequence[GridJob],
    task_args: Sequence[tuple[Any, ...]],
    *,
    submitter: Submitter,
    python: str,
    resources: Resources,
) -> None:
    """Run the jobs with submitit's local executor, at most one per slot at a time; blocks until all end.

    The local executor has no queue, so trajhpc itself keeps the slots busy. Ctrl-C cancels
    the running jobs (a later ``submit`` resumes them from their last completed stage).
    """
    import submitit
    from submitit.helpers import environment_variables

    from trajhpc.job.run import JobTask

    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    slots = local_slots(resources, len(os.sched_getaffinity(0)), _visible_gpus(), memory_gb)
    console.print(
        f"running {jobs_phrase(len(jobs))} locally, {len(slots)} at a time (logs in {submitter.folder})",
        highlight=False, soft_wrap=True,
    )
    waiting = deque(zip(jobs, task_args))
    running: dict[int, tuple[GridJob, Any]] = {}
    ended: dict[str, tuple[JobFiles, Row]] = {}  # job id -> its files and row once it ended
    not_started = {job.job_id: _waiting(job) for job in jobs}
    finished = 0
    title = f"study {jobs[0].study}" if jobs else "local run"
    with Board(console, title, labels=False, tables=False) as board:
        try:
            while waiting or running:
                for slot, gpus in enumerate(slots):
                    if slot in running or not waiting:
                        continue
                    job, args = waiting.popleft()
                    executor = submitit.LocalExecutor(
                        folder=submitter.folder, max_num_timeout=resources.max_requeues, python=python
                    )
                    executor.update_parameters(
                        timeout_min=resources.timeout_min,
                        signal_delay_s=resources.signal_delay_s,
                        gpus_per_node=len(gpus),
                        visible_gpus=gpus,
                    )
                    # The controller copies this process's environment when it starts.
                    with environment_variables(OMP_NUM_THREADS=resources.cpus_per_task):
                        handle = executor.submit(JobTask(), *args)
                    write_record(job, submitter, slurm_job_id=None, local_pid=int(handle.job_id))
                    running[slot] = (job, handle)
                time.sleep(POLL_S)
                for slot, (job, handle) in list(running.items()):
                    if handle.done():
                        del running[slot]
                        finished += 1
                        files, row = ended[job.job_id] = _ended(job, handle)
                        line = f"[{finished}/{len(jobs)}] {job.job_id} {job.spec.arm} seed {job.spec.seed}: {row.label}"
                        console.print(line + (f" ({row.detail})" if row.detail else ""), highlight=False,
                                      soft_wrap=True)
                _show(board, jobs, {job.job_id for job, _ in running.values()}, ended, not_started)
        except BaseException:  # Ctrl-C, SIGTERM, or a record that could not be written (disk full)
            for _, handle in running.values():
                handle.cancel()
            _wait_ended([handle for _, handle in running.values()])
            raise


def _wait_ended(handles: Sequence[Any], timeout_s: float = 15.0) -> None:
    """Wait (a bounded time) for cancelled jobs to stop, so that none outlives this submit and their
    last words come before its own (submitit's controller kills a job 1 s after its SIGINT)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not all(_ended_quietly(h) for h in handles):
        try:
            time.sleep(0.1)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            return


def _ended_quietly(handle: Any) -> bool:
    try:
        return bool(handle.done())
    except Exception:  # noqa: BLE001 - a job whose state cannot be read has ended as far as we can tell
        return True


def _ended(job: GridJob, handle: Any) -> tuple[JobFiles, Row]:
    """The files and row of a job whose process ended, labelled by what the job itself reported
    (submitit's captured exception says why a job died before writing state.json)."""
    files = read_job_dir(job.run_dir)
    label, detail = display_state(files.state, files.complete, GONE)
    if label == "failed" and not (files.state or {}).get("error"):
        detail = _failure_line(handle.exception()) or detail
    return files, dataclasses.replace(make_row(files, GONE, dt.datetime.now(dt.timezone.utc)), label=label, detail=detail)


def _show(board: Board, jobs: Sequence[GridJob], running: set[str], ended: dict[str, tuple[JobFiles, Row]],
          waiting: dict[str, tuple[JobFiles, Row]]) -> None:
    """Every job of the run on the board: ended, running (its files read now) or waiting for a slot."""
    now = dt.datetime.now(dt.timezone.utc)
    files, rows, progress = [], [], []
    for job in jobs:
        if job.job_id in running:
            f = read_job_dir(job.run_dir)
            row = make_row(f, "RUNNING", now)
        else:
            f, row = ended.get(job.job_id) or waiting[job.job_id]
        files.append(f)
        rows.append(row)
        progress.append(board.progress(f) if job.job_id in running or job.job_id in ended else JobProgress())
    board.show(files, rows, progress)


def _waiting(job: GridJob) -> tuple[JobFiles, Row]:
    """A job not started yet in this run (its directory, maybe left by an earlier run, is not read)."""
    files = JobFiles(job.job_id, job.run_dir, job.spec.to_dict(), None, False, None)
    return files, dataclasses.replace(make_row(files, None, dt.datetime.now(dt.timezone.utc)), label="waiting")
