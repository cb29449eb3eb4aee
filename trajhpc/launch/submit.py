"""``trajhpc submit``: expand a manifest and hand the jobs that still need running to submitit.

On Slurm all pending jobs of a study go out as ONE job array; locally, submitit's
``local`` executor runs them as separate processes, a few at a time
(:mod:`trajhpc.launch.localrun`). The task is ``trajhpc.job.run.JobTask`` (checkpointable: requeued
on timeout or preemption, resumes from its job directory). Each submitted job gets
``<job dir>/submission.json`` (:mod:`trajhpc.launch.submission`), which is how ``status`` and
the next ``submit`` find it again.

Submitting twice is safe: done jobs are skipped, queued or running ones left alone,
and failed, cancelled, timed-out or missing ones submitted again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import shutil
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

from trajhpc.core.errors import EXIT_INTERRUPTED, TrajhpcError, last_line
from trajhpc.core.termtable import Col
from trajhpc.jobdir.snapshot import JobFiles
from trajhpc.launch import container as ctr
from trajhpc.launch import slurmclient
from trajhpc.launch.liveview import watch_rows
from trajhpc.launch.localrun import run_local
from trajhpc.launch.slurmheld import held_message, recheck_before_resubmit
from trajhpc.launch.status import (
    ACTIVE_STATES,
    collect_rows,
    counts_line,
    decide,
    is_active,
    make_row,
    observe,
    render_table,
)
from trajhpc.launch.submission import (
    JOURNAL,
    Submitter,
    jobs_phrase,
    recover_interrupted,
    study_lock,
    write_journal,
    write_record,
    write_spec,
)
from trajhpc.launch.submitit_adapter import render_sbatch, slurm_parameters, task_command
from trajhpc.study import containerfields as fields
from trajhpc.study.grid import GridJob, expand
from trajhpc.study.manifest import Manifest, load_manifest, run_root_problem
from trajhpc.study.preflight import check_study
from trajhpc.study.tracking import tracking_context

SUBMITIT_DIR = ".submitit"
EXECUTORS = ("slurm", "local", "auto")
# Slurm batch steps see the whole node's cores; keep torch's thread pool to the allocation.
# Exit status of a `submit` that waited for its jobs when some did not finish (trajhpc.cli documents
# every exit status; EXIT_INTERRUPTED lives in trajhpc.core.errors).
EXIT_JOBS_FAILED = 3
# A job that ended without finishing, or whose files are damaged (it did not finish either).
UNFINISHED = ("failed", "interrupted", "cancelled", "corrupt", "unreadable")
WRITE_THREADS = 8


# ---------------------------------------------------------------- pure pieces


def resolve_executor(choice: str, sbatch_on_path: bool) -> str:
    """``auto`` -> ``slurm`` when sbatch is available, else ``local``."""
    if choice not in EXECUTORS:
        raise TrajhpcError(f"--executor must be one of {', '.join(EXECUTORS)}, got {choice!r}")
    if choice == "auto":
        return "slurm" if sbatch_on_path else "local"
    return choice


def missing_slurm_commands() -> list[str]:
    """The Slurm commands a submission needs that are not on PATH (submitit runs ``srun`` in the
    script and checks for it up front; ``sbatch`` submits)."""
    return [name for name in ("sbatch", "srun") if shutil.which(name) is None]


def check_slurm_here() -> None:
    """Before anything is written: ``executor: slurm`` needs Slurm's commands on this machine."""
    missing = missing_slurm_commands()
    if missing:
        raise TrajhpcError(
            f"executor slurm: this machine has no Slurm ({' and '.join(missing)} not found on PATH); "
            "submit from a Slurm login node, or run here with --executor local"
        )


def _expand_bind(bind: str, manifest: Manifest, index: int) -> str:
    """``~`` and ``$VAR`` in a manifest bind's source, expanded here (never by a shell) and checked again."""
    try:
        return fields.expand_bind(bind)
    except ValueError as err:
        raise manifest.error(f"container.binds.{index}", str(err)) from None


def _expand_image(manifest: Manifest) -> str | None:
    """``~`` and ``$VAR`` in the manifest's image, expanded here and checked again."""
    image = manifest.container.image
    if image is None:
        return None
    try:
        return fields.check_image(fields.expand_vars(image))
    except ValueError as err:
        raise manifest.error("container.image", str(err)) from None


# ---------------------------------------------------------------- what to submit (I/O: reads job dirs)


def discover_slurm_client() -> slurmclient.SlurmClientPaths:
    """The host's Slurm client files (a seam for tests)."""
    return slurmclient.discover_slurm_client()


def jobs_by_action(
    jobs: Sequence[GridJob], files: Sequence[JobFiles], sched: dict[str, str]
) -> dict[str, list[GridJob]]:
    """Split the grid into skip (done) / leave (queued or running) / submit."""
    out: dict[str, list[GridJob]] = {"skip": [], "leave": [], "submit": []}
    for job, f in zip(jobs, files):
        out[decide(f.complete, sched.get(f.job_id))].append(job)
    return out


class Launch:
    """Everything one submission shares: executor kind, folder, task python, context."""

    def __init__(self, manifest: Manifest, manifest_path: Path, run_root: Path, executor: str):
        self.manifest = manifest
        self.kind = executor
        cwd = Path.cwd()
        self.run_root = (cwd / run_root).resolve()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        # One folder per submission: Slurm ids restart when a cluster's state is wiped,
        # and submitit would hand back a stale result pickle from a reused folder.
        self.folder = self.run_root / manifest.study / SUBMITIT_DIR / f"{stamp}-{uuid.uuid4().hex[:6]}"
        box = manifest.container
        self.image_expanded = _expand_image(manifest)
        self.image = ctr.image_reference(box.runtime, self.image_expanded, cwd)
        home = Path.home()
        binds = ctr.default_binds(self.run_root, manifest.data.root, manifest.model, os.environ, home)
        binds += [_expand_bind(b, manifest, i) for i, b in enumerate(box.binds)]
        self.python = ctr.task_python(
            box.runtime, self.image, binds, slurm=executor == "slurm", gpus=manifest.resources.gpus_per_node > 0,
            cwd=cwd, env=os.environ, home=home, slurm_client=discover_slurm_client,
        ) or shlex.quote(sys.executable)
        self.context = {
            "container_image": self.image,
            "container_digest": None,  # filled in by digest(), only when really submitting
            "container_runtime": box.runtime,
            "executor": executor,
            "manifest": str(manifest_path.resolve()),
            "submitit_folder": str(self.folder),
        }
        tracking = tracking_context(manifest.tracking, cwd)
        if tracking is not None:  # absent when off: what a job records of its context stays as it was
            self.context["tracking"] = tracking

    def path_problems(self) -> list[tuple[str, str]]:
        """(manifest field, message) for the image file and each manifest bind source that does not exist here."""
        box = self.manifest.container
        problems: list[tuple[str, str]] = []
        if box.runtime == "none":
            return problems
        if box.runtime == "apptainer" and self.image and "://" not in self.image and not Path(self.image).is_file():
            problems.append(("container.image", f"image file {self.image} not found (apptainer build it first)"))
        for i, bind in enumerate(box.binds):
            src = Path(_expand_bind(bind, self.manifest, i).split(":")[0])
            if not src.exists():
                problems.append((f"container.binds.{i}", f"{src} does not exist (the runtime would refuse it)"))
        return problems

    def check_paths(self) -> None:
        """Before a real submission: the image file and every manifest bind source must exist."""
        for field_name, message in self.path_problems()[:1]:
            raise self.manifest.error(field_name, message)

    def missing_paths(self) -> list[str]:
        """What a dry run warns about: what ``check_paths`` would refuse, and a runtime a local run lacks."""
        out = [f"{self.manifest.error(f, m)}; a real submit stops here" for f, m in self.path_problems()]
        runtime = self.manifest.container.runtime
        if self.kind == "local" and runtime != "none" and shutil.which(runtime) is None:
            out.append(f"{runtime} is not on PATH: the local jobs run in the container and would fail")
        if self.kind == "slurm" and missing_slurm_commands():
            out.append(f"{' and '.join(missing_slurm_commands())} not found on PATH: this machine has no Slurm; "
                       "a real submit stops here")
        return out

    def digest(self) -> None:
        box = self.manifest.container
        self.context["container_digest"] = ctr.image_digest(box.runtime, self.image_expanded, box.digest, Path.cwd())

    def sbatch(self, n_jobs: int) -> str:
        return render_sbatch(self.manifest, folder=self.folder, python=self.python, n_jobs=n_jobs)

    @property
    def submitter(self) -> Submitter:
        """What the records of this submission share."""
        return Submitter(self.kind, self.folder, self.context["manifest"], slurm_parameters(self.manifest)["job_name"],
                         analysis=self.manifest.analysis.document(), overrides=tuple(self.manifest.overrides),
                         effective=self.manifest.effective())


# ---------------------------------------------------------------- submission (I/O)


def _task_args(jobs: Sequence[GridJob], launch: Launch) -> tuple[list, list, list, list]:
    """Positional arguments of ``JobTask.__call__`` for each job: spec dict, job dir, study, context."""
    return (
        [job.spec.to_dict() for job in jobs],
        [str(launch.run_root / job.study / job.job_id) for job in jobs],
        [job.study for job in jobs],
        [dict(launch.context) for _ in jobs],
    )


def make_slurm_executor(launch: Launch) -> Any:
    """The SlurmExecutor whose sbatch script ``render_sbatch`` shows."""
    import submitit

    executor = submitit.SlurmExecutor(
        folder=launch.folder, max_num_timeout=launch.manifest.resources.max_requeues, python=launch.python
    )
    executor.update_parameters(**slurm_parameters(launch.manifest))
    return executor


def submit_slurm(jobs: Sequence[GridJob], launch: Launch) -> list[str]:
    """Submit all jobs as one array; returns their Slurm ids (``<array>_<task>``).

    The journal written before sbatch is removed once every record is written; if this
    process dies in between, the next submit finds the array in Slurm (``recover_interrupted``).
    """
    from trajhpc.job.run import JobTask

    study_dir = launch.run_root / launch.manifest.study
    _each(write_spec, jobs)
    try:
        executor = make_slurm_executor(launch)  # submitit checks for srun here: before any journal
    except Exception as err:
        raise TrajhpcError(f"cannot set up the Slurm submission: {last_line(str(err), width=400) or repr(err)}") from None
    write_journal(study_dir, jobs, launch.submitter)
    try:
        submitted = executor.map_array(JobTask(), *_task_args(jobs, launch))
    except Exception as err:  # sbatch's own message (the last line) is the useful part
        (study_dir / JOURNAL).unlink(missing_ok=True)  # nothing went out
        raise TrajhpcError(f"sbatch failed: {last_line(str(err), width=400) or repr(err)}") from None
    ids = [s.job_id for s in submitted]
    try:
        _each(lambda pair: write_record(pair[0], launch.submitter, slurm_job_id=pair[1], local_pid=None), list(zip(jobs, ids)))
    except TrajhpcError as err:  # disk full, quota: the journal stays, so nothing is submitted twice
        raise TrajhpcError(
            f"{err}; Slurm accepted the jobs (job {ids[0].split('_')[0]}): the next `trajhpc submit` records them"
        ) from None
    (study_dir / JOURNAL).unlink(missing_ok=True)
    return ids


def _each(fn: Callable[[Any], None], items: Sequence[Any]) -> None:
    """``fn`` on every item, a few at a time: each is an fsync'd file write that waits on the disk."""
    if len(items) < 16:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        for _ in pool.map(fn, items):  # re-raises the first error
            pass


def _action_column(jobs: Sequence[GridJob], groups: dict[str, list[GridJob]]) -> list[str]:
    by_id = {job.job_id: action for action, members in groups.items() for job in members}
    return [by_id[job.job_id] for job in jobs]


def print_estimate(
    console: Console, manifest: Manifest, jobs: Sequence[GridJob], todo: Sequence[GridJob], rates_path: Path
) -> None:
    """The grid's estimated GPU-hours from measured rates (see trajhpc.launch.cost)."""
    from trajhpc.launch.cost import WorkPlanner, format_estimate, load_rates

    rates = load_rates(rates_path)
    planner = WorkPlanner()
    works = {job.job_id: planner.work(job.spec) for job in jobs}
    gpus = manifest.resources.gpus_per_node
    console.print(format_estimate(list(works.values()), rates, gpus, "the grid"), highlight=False, soft_wrap=True)
    if 0 < len(todo) < len(jobs):
        line = format_estimate([works[j.job_id] for j in todo], rates, gpus, "what is to submit")
        console.print(line, highlight=False, soft_wrap=True)


@dataclass
class Submission:
    """One ``trajhpc submit``: the grid, what each job's directory and scheduler say, and the split."""

    manifest: Manifest
    launch: Launch
    jobs: list[GridJob]
    specs: dict[str, dict[str, Any]]  # job id -> spec dict (status checks each job dir holds its own)
    files: list[JobFiles] = field(default_factory=list)
    sched: dict[str, str] = field(default_factory=dict)
    groups: dict[str, list[GridJob]] = field(default_factory=dict)
    # (manifest field, message) of what a real submit refuses and a dry run only shows (study.preflight).
    deferred: list[tuple[str, str]] = field(default_factory=list)

    @property
    def todo(self) -> list[GridJob]:
        return self.groups["submit"]

    @property
    def study_dir(self) -> Path:
        return self.launch.run_root / self.manifest.study


def prepare_submission(
    manifest_path: Path, run_root: Path | None, executor: str | None, overrides: Sequence[str] = ()
) -> Submission:
    """Load the manifest (``--set`` overrides applied), expand the grid, set up the launch (nothing read
    from job directories yet)."""
    manifest = load_manifest(manifest_path, overrides)
    if run_root is not None and run_root_problem(run_root):
        raise TrajhpcError(f"--run-root: {run_root_problem(run_root)}")
    root = Path(run_root) if run_root is not None else Path(manifest.run_root)
    jobs = expand(manifest, root)
    kind = resolve_executor(executor or manifest.executor, shutil.which("sbatch") is not None)
    deferred = check_study(manifest, jobs)  # what would fail every job, refused once here (dry run too)
    launch = Launch(manifest, Path(manifest_path), root, kind)
    return Submission(manifest, launch, jobs, {job.job_id: job.spec.to_dict() for job in jobs}, deferred=deferred)


def observe_submission(sub: Submission) -> None:
    """Plan: read every job's directory and scheduler state, split into skip / leave / submit."""
    sub.files, sub.sched = observe([job.run_dir for job in sub.jobs], sub.specs)
    # Whatever this submit's executor, a job Slurm's controller still holds is never run again.
    again = [f.job_id for f in sub.files if decide(f.complete, sub.sched.get(f.job_id)) == "submit"]
    held = recheck_before_resubmit(sub.files, again)
    sub.sched.update(held)
    sub.groups = jobs_by_action(sub.jobs, sub.files, sub.sched)


def show_submission(console: Console, sub: Submission, *, dry_run: bool, rates: Path | None) -> None:
    """Show: the table (dry run), the counts, the cost estimate, and what a dry run would send."""
    if dry_run:
        now = dt.datetime.now(dt.timezone.utc)
        rows = [make_row(f, sub.sched.get(f.job_id), now) for f in sub.files]
        actions = [Col("action", _action_column(sub.jobs, sub.groups))]
        console.print(render_table(rows, f"study {sub.manifest.study}", actions, width=console.width))
    if sub.manifest.overrides:  # the grid above is the file's with these applied
        said = " ".join(f"--set {shlex.quote(o)}" for o in sub.manifest.overrides)
        console.print(f"overrides: {said}", highlight=False, soft_wrap=True)
    console.print(
        f"{jobs_phrase(len(sub.jobs))}: {len(sub.todo)} to submit, {len(sub.groups['skip'])} done (skipped), "
        f"{len(sub.groups['leave'])} queued or running (left alone)",
        highlight=False, soft_wrap=True,
    )
    held = {f.job_id: sub.sched[f.job_id] for f in sub.files if sub.sched.get(f.job_id) in ACTIVE_STATES}
    message = held_message(sub.launch.kind, held, sub.files)
    if message:
        console.print(message, highlight=False, soft_wrap=True)
    if rates is not None:
        print_estimate(console, sub.manifest, sub.jobs, sub.todo, rates)
    if not dry_run:
        return
    launch = sub.launch
    deferred = [f"{sub.manifest.error(f, m)}; a real submit stops here" for f, m in sub.deferred]
    for warning in deferred + launch.missing_paths():
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    if not sub.todo:
        console.print("nothing to submit")
    elif launch.kind == "slurm":
        console.print(f"sbatch script for {jobs_phrase(len(sub.todo))} ({launch.folder}):", highlight=False, soft_wrap=True)
        console.out(launch.sbatch(len(sub.todo)), highlight=False)
    else:
        command = task_command(launch.python, launch.folder)
        console.print(f"local executor: each job runs `{command}`", highlight=False, soft_wrap=True)


def send_submission(console: Console, sub: Submission) -> None:
    """Submit: the Slurm array, or the local run (which blocks until its jobs end)."""
    todo, launch = sub.todo, sub.launch
    for job in todo:
        if sub.sched.get(job.job_id):  # submitted before: say why it goes again
            console.print(f"resubmitting {job.job_id} (was {sub.sched[job.job_id].lower()})", highlight=False,
                          soft_wrap=True)
    if not todo:
        console.print("nothing to submit")
        return
    for field_name, message in sub.deferred[:1]:
        raise sub.manifest.error(field_name, message)
    launch.check_paths()
    launch.folder.mkdir(parents=True, exist_ok=True)
    launch.digest()
    if launch.kind == "slurm":
        ids = submit_slurm(todo, launch)
        what = f"array {ids[0].split('_')[0]}" if len(ids) > 1 else f"job {ids[0]}"
        console.print(f"submitted {jobs_phrase(len(ids))} as Slurm {what} (logs in {launch.folder})", highlight=False,
                      soft_wrap=True)
    else:
        run_local(
            console, todo, list(zip(*_task_args(todo, launch))),
            submitter=launch.submitter, python=launch.python, resources=launch.manifest.resources,
        )


def submit_command(
    console: Console,
    manifest_path: Path,
    *,
    dry_run: bool,
    run_root: Path | None,
    executor: str | None,
    wait: bool,
    rates: Path | None = None,
    overrides: Sequence[str] = (),
) -> int:
    """``trajhpc submit``: plan, show, then submit (or, with ``--dry-run``, show the sbatch script).

    With ``rates`` (a file written by ``benchmarks/bench_gpu_qlora.py --job``) it also
    prints the estimated GPU-hours of the grid and of what is to be submitted.
    Returns the exit status: ``EXIT_JOBS_FAILED`` when it waited for jobs (local, or
    ``--wait``) and some did not finish, 130 when the wait was interrupted, else 0.
    """
    sub = prepare_submission(manifest_path, run_root, executor, overrides)
    if not dry_run and sub.launch.kind == "slurm":
        check_slurm_here()
    # A dry run only reads; a real one holds the study's lock from reading the jobs'
    # states to writing their records.
    with contextlib.nullcontext() if dry_run else study_lock(console, sub.study_dir):
        if not dry_run:
            recover_interrupted(console, sub.study_dir)
        observe_submission(sub)
        show_submission(console, sub, dry_run=dry_run, rates=rates)
        if dry_run:
            return 0
        send_submission(console, sub)
    dirs = [job.run_dir for job in sub.jobs]
    kind = sub.launch.kind
    if kind == "slurm" and wait and (sub.todo or sub.groups["leave"]):
        title = f"study {sub.manifest.study}"
        rows = watch_rows(console, lambda: dirs, title, 10.0, until_idle=True, specs=sub.specs)
    elif kind == "local" and sub.todo:
        rows = collect_rows(dirs, sub.specs)
        console.print(counts_line(rows), highlight=False, soft_wrap=True)
        ran = {job.job_id for job in sub.todo}
        rows = [r for r in rows if r.job_id in ran]  # others may still run under another submit
    else:
        return 0
    return wait_status(console, rows)


def wait_status(console: Console, rows: Sequence[Any]) -> int:
    """Exit status once submit has waited for its jobs: 0 only when none failed (see ``submit_command``)."""
    active = sum(is_active(r) for r in rows)
    if active:  # watch_rows returns early only on Ctrl-C
        console.print(f"stopped waiting; {jobs_phrase(active)} still queued or running", highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    unfinished = sum(r.label in UNFINISHED for r in rows)
    if unfinished:
        console.print(
            f"{jobs_phrase(unfinished)} did not finish (`trajhpc status` says why; `trajhpc submit` again resumes them)",
            highlight=False, soft_wrap=True,
        )
        return EXIT_JOBS_FAILED
    return 0
