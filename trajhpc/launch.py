"""``trajhpc submit``: expand a manifest and hand the jobs that still need running to submitit.

On Slurm all pending jobs of a study go out as ONE job array; locally, submitit's
``local`` executor runs them as separate processes, a few at a time. The task is
``trajhpc.job.JobTask`` (checkpointable: requeued on timeout or preemption, resumes
from its job directory). Each submitted job gets ``<job dir>/submission.json``
(executor, Slurm id ``<array>_<task>`` or local pid, submitit folder), which is how
``status`` and the next ``submit`` find it again.

Submitting twice is safe: done jobs are skipped, queued or running ones left alone,
and failed, cancelled, timed-out or missing ones submitted again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from rich.console import Console
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

from trajhpc import container as ctr
from trajhpc import locks
from trajhpc.atomic import atomic_write_json
from trajhpc.errors import TrajhpcError
from trajhpc.grid import GridJob, expand
from trajhpc.manifest import Manifest, Resources, load_manifest, run_root_problem
from trajhpc.provenance import now_iso
from trajhpc.status import (
    GONE,
    RECORD,
    RECORD_SCHEMA,
    JobFiles,
    collect_rows,
    counts_line,
    decide,
    display_state,
    find_submission,
    is_active,
    last_line,
    make_row,
    observe,
    read_job_dir,
    render_table,
    watch_rows,
)

SUBMITIT_DIR = ".submitit"
# In <run_root>/<study>/: held from reading the jobs' states to writing their records,
# so two `trajhpc submit` runs of one study never both submit the same job.
LOCK_FILE = ".submit.lock"
LOCK_TIMEOUT_S = 120.0
# In <run_root>/<study>/ while sbatch runs: which jobs go out from which submitit folder,
# so a submit killed between sbatch and the records can be recovered by the next one.
JOURNAL = ".submitting.json"
JOURNAL_SCHEMA = "trajhpc.submitting/1"
EXECUTORS = ("slurm", "local", "auto")
# Slurm batch steps see the whole node's cores; keep torch's thread pool to the allocation.
SLURM_SETUP = ("export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",)
LOCAL_POLL_S = 1.0
# Exit statuses of `submit` that waited for its jobs (trajhpc.cli documents them all).
EXIT_JOBS_FAILED = 3
EXIT_INTERRUPTED = 130
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


def slurm_parameters(manifest: Manifest) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` keywords for the manifest's resources (submitit's names)."""
    res = manifest.resources
    params: dict[str, Any] = {
        "job_name": f"trajhpc-{manifest.study}",
        "time": res.timeout_min,
        "mem": _convert_mem(res.mem_gb),
        "cpus_per_task": res.cpus_per_task,
        "array_parallelism": res.array_parallelism,
        "signal_delay_s": res.signal_delay_s,
        "setup": list(SLURM_SETUP),
    }
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    for name in ("partition", "account", "qos", "constraint"):
        if getattr(res, name) is not None:
            params[name] = getattr(res, name)
    if res.extra_sbatch:
        params["additional_parameters"] = dict(res.extra_sbatch)
    return params


def submitit_command(python: str, folder: Path) -> str:
    """The task command line, exactly as submitit's executors build it."""
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(manifest: Manifest, *, folder: Path, python: str, n_jobs: int) -> str:
    """The sbatch script submitit writes for ``n_jobs`` jobs (an array when n > 1), rendered by submitit itself."""
    map_count = n_jobs if n_jobs > 1 else None  # submitit submits a single job as a plain job
    return _make_sbatch_string(
        command=submitit_command(python, folder), folder=folder, map_count=map_count, **slurm_parameters(manifest)
    )


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


def default_binds(manifest: Manifest, run_root: Path, env: dict[str, str], home: Path) -> list[str]:
    """What every containerised job needs to see: the run root, the data, the model caches, a local model."""
    binds = [str(run_root)]
    candidates = [manifest.data.root, *cache_dirs(env, home).values(), manifest.model]
    # Apptainer and Docker refuse a bind whose source is missing: bind only what exists.
    binds += [str(Path(c).expanduser()) for c in candidates if c and Path(c).expanduser().exists()]
    return binds


def cache_dirs(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """The model caches a job uses: ``TRAJHPC_CACHE`` and ``HF_HOME``, defaults under ``home``."""
    return {
        "TRAJHPC_CACHE": str(Path(env.get("TRAJHPC_CACHE") or home / ".cache" / "trajhpc").expanduser()),
        "HF_HOME": str(Path(env.get("HF_HOME") or home / ".cache" / "huggingface").expanduser()),
    }


def docker_env(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """Variables set inside ``docker run`` (which, unlike Apptainer, passes no host environment):
    HOME and the caches at the host's paths, so ``~`` and the default caches resolve as outside."""
    return {"HOME": str(home), **cache_dirs(env, home)}


def _expand_bind(bind: str, manifest: Manifest, index: int) -> str:
    """``~`` and ``$VAR`` in a manifest bind's source, expanded here (never by a shell) and checked again."""
    try:
        return ctr.expand_bind(bind)
    except ValueError as err:
        raise manifest.error(f"container.binds.{index}", str(err)) from None


def _expand_image(manifest: Manifest) -> str | None:
    """``~`` and ``$VAR`` in the manifest's image, expanded here and checked again."""
    image = manifest.container.image
    if image is None:
        return None
    try:
        return ctr.check_image(ctr.expand_vars(image))
    except ValueError as err:
        raise manifest.error("container.image", str(err)) from None


# ---------------------------------------------------------------- what to submit (I/O: reads job dirs)


def discover_slurm_client() -> ctr.SlurmClientPaths:
    """The host's Slurm client files (a seam for tests)."""
    return ctr.discover_slurm_client()


def plan(jobs: Sequence[GridJob], files: Sequence[JobFiles], sched: dict[str, str]) -> dict[str, list[GridJob]]:
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
        binds = default_binds(manifest, self.run_root, dict(os.environ), Path.home())
        binds += [_expand_bind(b, manifest, i) for i, b in enumerate(box.binds)]
        env: dict[str, str] = {}
        if box.runtime == "docker":
            env = docker_env(os.environ, Path.home())
        elif box.runtime == "apptainer" and executor == "slurm":
            # submitit requeues a timed-out task with `scontrol requeue` from inside it.
            client_binds, env = ctr.slurm_client_binds(discover_slurm_client())
            binds += client_binds
        self.python = ctr.python_command(
            box.runtime,
            self.image,
            ctr.unique_binds(binds, cwd),
            gpus=manifest.resources.gpus_per_node > 0,
            uid_gid=(os.getuid(), os.getgid()),
            env=env,
            workdir=cwd if box.runtime == "docker" else None,
        ) or shlex.quote(sys.executable)
        self.context = {
            "container_image": self.image,
            "container_digest": None,  # filled in by digest(), only when really submitting
            "container_runtime": box.runtime,
            "executor": executor,
            "manifest": str(manifest_path.resolve()),
            "submitit_folder": str(self.folder),
        }

    def check_paths(self) -> None:
        """Before a real submission: the image file and every manifest bind source must exist."""
        box = self.manifest.container
        if box.runtime == "none":
            return
        if box.runtime == "apptainer" and self.image and "://" not in self.image and not Path(self.image).is_file():
            message = f"image file {self.image} not found (apptainer build it first)"
            raise self.manifest.error("container.image", message)
        for i, bind in enumerate(box.binds):
            src = Path(_expand_bind(bind, self.manifest, i).split(":")[0])
            if not src.exists():
                raise self.manifest.error(f"container.binds.{i}", f"{src} does not exist (the runtime would refuse it)")

    def digest(self) -> None:
        box = self.manifest.container
        self.context["container_digest"] = ctr.image_digest(box.runtime, self.image_expanded, box.digest, Path.cwd())

    def sbatch(self, n_jobs: int) -> str:
        return render_sbatch(self.manifest, folder=self.folder, python=self.python, n_jobs=n_jobs)


# ---------------------------------------------------------------- submission (I/O)


def write_spec(job: GridJob) -> None:
    """``spec.json`` if absent (the job checks it is its own when it starts)."""
    if not (job.run_dir / "spec.json").exists():
        atomic_write_json(job.run_dir / "spec.json", job.spec.to_dict())


def write_record(job: GridJob, launch: Launch, *, slurm_job_id: str | None, local_pid: int | None) -> None:
    """``submission.json`` (previous attempts kept under ``previous``) and ``spec.json`` if absent."""
    write_spec(job)
    _write_record(
        job.run_dir,
        executor=launch.kind,
        folder=launch.folder,
        manifest=launch.context["manifest"],
        job_name=slurm_parameters(launch.manifest)["job_name"],
        slurm_job_id=slurm_job_id,
        local_pid=local_pid,
    )


def _write_record(
    run_dir: Path,
    *,
    executor: str,
    folder: Path,
    manifest: str | None,
    job_name: str,
    slurm_job_id: str | None,
    local_pid: int | None,
    **extra: Any,
) -> None:
    old = read_job_dir(run_dir).record
    previous = ([{k: v for k, v in old.items() if k != "previous"}] + old.get("previous", [])) if old else []
    paths = JobPaths(folder, job_id=slurm_job_id or str(local_pid), task_id=0)
    atomic_write_json(
        run_dir / RECORD,
        {
            "schema": RECORD_SCHEMA,
            "job_id": run_dir.name,
            "study": run_dir.parent.name,
            "executor": executor,
            "slurm_job_id": slurm_job_id,
            "slurm_job_name": job_name if slurm_job_id else None,
            "local_pid": local_pid,
            "user": getpass.getuser(),
            "submitted": now_iso(),
            "submitit_folder": str(folder),
            "stdout": str(paths.stdout),
            "stderr": str(paths.stderr),
            "manifest": manifest,
            **extra,
            "previous": previous[:20],
        },
    )


# ---------------------------------------------------------------- one submit at a time, and crash recovery


@contextlib.contextmanager
def study_lock(console: Console, study_dir: Path, timeout_s: float | None = None) -> Iterator[None]:
    """Exclusive lock on ``<study_dir>/.submit.lock``: a second submit of the study waits, then gives up.

    The lock file goes when the lock is released, and so does a study folder this submit
    created and left empty (a refused submit leaves nothing behind).
    """
    timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    created = not study_dir.exists()
    path = study_dir / LOCK_FILE
    try:
        with contextlib.ExitStack() as stack:
            if not stack.enter_context(locks.exclusive(path)):
                console.print(
                    f"another trajhpc submit of study {study_dir.name} is running; waiting up to {timeout_s:.0f} s "
                    f"for it ({path})",
                    highlight=False,
                )
                if not stack.enter_context(locks.exclusive(path, timeout_s)):
                    raise TrajhpcError(
                        f"another trajhpc submit of study {study_dir.name} still holds {path} after "
                        f"{timeout_s:.0f} s; let it finish (a local run holds it until its jobs end), then submit again"
                    )
            yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                study_dir.rmdir()  # only if empty


def write_journal(study_dir: Path, jobs: Sequence[GridJob], launch: Launch) -> None:
    """Before sbatch: which jobs (in array order) go out from which submitit folder."""
    atomic_write_json(
        study_dir / JOURNAL,
        {
            "schema": JOURNAL_SCHEMA,
            "since": now_iso(),
            "folder": str(launch.folder),
            "job_name": slurm_parameters(launch.manifest)["job_name"],
            "manifest": launch.context["manifest"],
            "jobs": [job.job_id for job in jobs],
        },
    )


def recover_interrupted(console: Console, study_dir: Path) -> None:
    """Finish a submit that was killed between sbatch and its records (its journal is still there).

    The array is looked up in Slurm by job name and submitit folder: found, its jobs get
    their records (so they are left alone); not found, the journal goes and they are
    submitted like any job without a record. Slurm unreachable: TrajhpcError (never guess).
    """
    path = study_dir / JOURNAL
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
        job_ids = [str(j) for j in journal["jobs"]]
        folder, job_name = Path(journal["folder"]), str(journal["job_name"])
        since = dt.datetime.fromisoformat(journal["since"])
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        console.print(f"ignoring unreadable {path}", highlight=False)
        path.unlink(missing_ok=True)
        return
    try:
        array = find_submission(job_name, folder, since)
    except TrajhpcError as err:
        raise TrajhpcError(
            f"{err}; an earlier submit of study {study_dir.name} was interrupted and trajhpc will not guess "
            f"whether its {_jobs(len(job_ids))} are queued (delete {path} if you know they are not)"
        ) from None
    if array:
        for i, job_id in enumerate(job_ids):
            run_dir = study_dir / job_id
            if not run_dir.is_dir():
                continue
            slurm_id = f"{array}_{i}" if len(job_ids) > 1 else array
            _write_record(
                run_dir, executor="slurm", folder=folder, manifest=journal.get("manifest"), job_name=job_name,
                slurm_job_id=slurm_id, local_pid=None, recovered=True,
            )
        console.print(
            f"an earlier submit was interrupted after Slurm accepted its {_jobs(len(job_ids))} "
            f"(job {array}): recorded them",
            highlight=False,
        )
    else:
        console.print(
            f"an earlier submit was interrupted before Slurm accepted its {_jobs(len(job_ids))}: "
            "they are submitted again",
            highlight=False,
        )
    path.unlink(missing_ok=True)


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
    from trajhpc.job import JobTask

    study_dir = launch.run_root / launch.manifest.study
    _each(write_spec, jobs)
    write_journal(study_dir, jobs, launch)
    executor = make_slurm_executor(launch)
    try:
        submitted = executor.map_array(JobTask(), *_task_args(jobs, launch))
    except Exception as err:  # sbatch's own message (the last line) is the useful part
        (study_dir / JOURNAL).unlink(missing_ok=True)  # nothing went out
        raise TrajhpcError(f"sbatch failed: {last_line(str(err), width=400) or repr(err)}") from None
    ids = [s.job_id for s in submitted]
    try:
        _each(lambda pair: write_record(pair[0], launch, slurm_job_id=pair[1], local_pid=None), list(zip(jobs, ids)))
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


def run_local(console: Console, jobs: Sequence[GridJob], launch: Launch) -> None:
    """Run the jobs with submitit's local executor, at most one per slot at a time; blocks until all end.

    The local executor has no queue, so trajhpc itself keeps the slots busy. Ctrl-C cancels
    the running jobs (a later ``submit`` resumes them from their last completed stage).
    """
    import submitit
    from submitit.helpers import environment_variables

    from trajhpc.job import JobTask

    res = launch.manifest.resources
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    slots = local_slots(res, len(os.sched_getaffinity(0)), _visible_gpus(), memory_gb)
    console.print(
        f"running {_jobs(len(jobs))} locally, {len(slots)} at a time (logs in {launch.folder})", highlight=False
    )
    waiting = deque(zip(jobs, zip(*_task_args(jobs, launch))))
    running: dict[int, tuple[GridJob, Any]] = {}
    finished = 0
    try:
        while waiting or running:
            for slot, gpus in enumerate(slots):
                if slot in running or not waiting:
                    continue
                job, args = waiting.popleft()
                executor = submitit.LocalExecutor(
                    folder=launch.folder, max_num_timeout=res.max_requeues, python=launch.python
                )
                executor.update_parameters(
                    timeout_min=res.timeout_min,
                    signal_delay_s=res.signal_delay_s,
                    gpus_per_node=len(gpus),
                    visible_gpus=gpus,
                )
                # The controller copies this process's environment when it starts.
                with environment_variables(OMP_NUM_THREADS=res.cpus_per_task):
                    handle = executor.submit(JobTask(), *args)
                write_record(job, launch, slurm_job_id=None, local_pid=int(handle.job_id))
                running[slot] = (job, handle)
            time.sleep(LOCAL_POLL_S)
            for slot, (job, handle) in list(running.items()):
                if handle.done():
                    del running[slot]
                    finished += 1
                    files = read_job_dir(job.run_dir)
                    label, detail = display_state(files.state, files.complete, GONE)
                    if label == "failed" and not (files.state or {}).get("error"):
                        # died before writing state.json: submitit's captured exception says why
                        detail = _failure_line(handle.exception()) or detail
                    line = f"[{finished}/{len(jobs)}] {job.job_id} {job.spec.arm} seed {job.spec.seed}: {label}"
                    console.print(line + (f" ({detail})" if detail else ""), highlight=False, soft_wrap=True)
    except BaseException:  # Ctrl-C, or a record that could not be written (disk full)
        for _, handle in running.values():
            handle.cancel()
        raise


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _action_column(jobs: Sequence[GridJob], groups: dict[str, list[GridJob]]) -> list[str]:
    by_id = {job.job_id: action for action, members in groups.items() for job in members}
    return [by_id[job.job_id] for job in jobs]


def print_estimate(
    console: Console, manifest: Manifest, jobs: Sequence[GridJob], todo: Sequence[GridJob], rates_path: Path
) -> None:
    """The grid's estimated GPU-hours from measured rates (see trajhpc.cost)."""
    from trajhpc.cost import WorkPlanner, format_estimate, load_rates

    rates = load_rates(rates_path)
    planner = WorkPlanner()
    works = {job.job_id: planner.work(job.spec) for job in jobs}
    gpus = manifest.resources.gpus_per_node
    console.print(format_estimate(list(works.values()), rates, gpus, "the grid"), highlight=False, soft_wrap=True)
    if 0 < len(todo) < len(jobs):
        line = format_estimate([works[j.job_id] for j in todo], rates, gpus, "what is to submit")
        console.print(line, highlight=False, soft_wrap=True)


def submit_command(
    console: Console,
    manifest_path: Path,
    *,
    dry_run: bool,
    run_root: Path | None,
    executor: str | None,
    wait: bool,
    rates: Path | None = None,
) -> int:
    """``trajhpc submit``: print the plan, then submit (or, with ``--dry-run``, show the sbatch script).

    With ``rates`` (a file written by ``benchmarks/bench_gpu_qlora.py --job``) it also
    prints the estimated GPU-hours of the grid and of what is to be submitted.
    Returns the exit status: ``EXIT_JOBS_FAILED`` when it waited for jobs (local, or
    ``--wait``) and some did not finish, 130 when the wait was interrupted, else 0.
    """
    manifest = load_manifest(manifest_path)
    if run_root is not None and run_root_problem(run_root):
        raise TrajhpcError(f"--run-root: {run_root_problem(run_root)}")
    root = Path(run_root) if run_root is not None else Path(manifest.run_root)
    jobs = expand(manifest, root)
    kind = resolve_executor(executor or manifest.executor, shutil.which("sbatch") is not None)
    specs = {job.job_id: job.spec.to_dict() for job in jobs}
    launch = Launch(manifest, Path(manifest_path), root, kind)
    study_dir = launch.run_root / manifest.study
    # A dry run only reads; a real one holds the study's lock from reading the jobs'
    # states to writing their records.
    with contextlib.nullcontext() if dry_run else study_lock(console, study_dir):
        if not dry_run:
            recover_interrupted(console, study_dir)
        files, sched = observe([job.run_dir for job in jobs], specs)
        groups = plan(jobs, files, sched)
        todo = groups["submit"]
        if dry_run:
            now = dt.datetime.now(dt.timezone.utc)
            rows = [make_row(f, sched.get(f.job_id), now) for f in files]
            console.print(render_table(rows, f"study {manifest.study}", {"action": _action_column(jobs, groups)}))
        console.print(
            f"{_jobs(len(jobs))}: {len(todo)} to submit, {len(groups['skip'])} done (skipped), "
            f"{len(groups['leave'])} queued or running (left alone)",
            highlight=False,
        )
        if rates is not None:
            print_estimate(console, manifest, jobs, todo, rates)
        if dry_run:
            if not todo:
                console.print("nothing to submit")
            elif kind == "slurm":
                console.print(f"sbatch script for {_jobs(len(todo))} ({launch.folder}):", highlight=False)
                console.out(launch.sbatch(len(todo)), highlight=False)
            else:
                command = submitit_command(launch.python, launch.folder)
                console.print(f"local executor: each job runs `{command}`", highlight=False, soft_wrap=True)
            return 0
        for job in todo:
            if sched.get(job.job_id):  # submitted before: say why it goes again
                console.print(f"resubmitting {job.job_id} (was {sched[job.job_id].lower()})", highlight=False)
        if not todo:
            console.print("nothing to submit")
        else:
            launch.check_paths()
            launch.folder.mkdir(parents=True, exist_ok=True)
            launch.digest()
            if kind == "slurm":
                ids = submit_slurm(todo, launch)
                what = f"array {ids[0].split('_')[0]}" if len(ids) > 1 else f"job {ids[0]}"
                console.print(
                    f"submitted {_jobs(len(ids))} as Slurm {what} (logs in {launch.folder})", highlight=False
                )
            else:
                run_local(console, todo, launch)
    dirs = [job.run_dir for job in jobs]
    if kind == "slurm" and wait and (todo or groups["leave"]):
        rows = watch_rows(console, lambda: dirs, f"study {manifest.study}", 10.0, until_idle=True, specs=specs)
    elif kind == "local" and todo:
        rows = collect_rows(dirs, specs)
        console.print(counts_line(rows), highlight=False)
        ran = {job.job_id for job in todo}
        rows = [r for r in rows if r.job_id in ran]  # others may still run under another submit
    else:
        return 0
    return wait_status(console, rows)


def wait_status(console: Console, rows: Sequence[Any]) -> int:
    """Exit status once submit has waited for its jobs: 0 only when none failed (see ``submit_command``)."""
    active = sum(is_active(r) for r in rows)
    if active:  # watch_rows returns early only on Ctrl-C
        console.print(f"stopped waiting; {_jobs(active)} still queued or running", highlight=False)
        return EXIT_INTERRUPTED
    unfinished = sum(r.label in UNFINISHED for r in rows)
    if unfinished:
        console.print(
            f"{_jobs(unfinished)} did not finish (`trajhpc status` says why; `trajhpc submit` again resumes them)",
            highlight=False,
        )
        return EXIT_JOBS_FAILED
    return 0
