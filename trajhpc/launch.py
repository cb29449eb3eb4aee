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

import datetime as dt
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from submitit.core.utils import JobPaths
from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

from trajhpc import container as ctr
from trajhpc.atomic import atomic_write_json
from trajhpc.errors import TrajhpcError
from trajhpc.grid import GridJob, expand
from trajhpc.manifest import Manifest, Resources, load_manifest
from trajhpc.status import (
    GONE,
    RECORD,
    RECORD_SCHEMA,
    JobFiles,
    collect_rows,
    counts_line,
    decide,
    display_state,
    last_line,
    make_row,
    observe,
    read_job_dir,
    render_table,
    watch_rows,
)

SUBMITIT_DIR = ".submitit"
EXECUTORS = ("slurm", "local", "auto")
# Slurm batch steps see the whole node's cores; keep torch's thread pool to the allocation.
SLURM_SETUP = ("export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",)
LOCAL_POLL_S = 1.0


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
    candidates = [
        manifest.data.root,
        env.get("TRAJHPC_CACHE") or str(home / ".cache" / "trajhpc"),
        env.get("HF_HOME") or str(home / ".cache" / "huggingface"),
        manifest.model,
    ]
    # Apptainer and Docker refuse a bind whose source is missing: bind only what exists.
    binds += [str(Path(c).expanduser()) for c in candidates if c and Path(c).expanduser().exists()]
    return binds


def _expand_bind(bind: str, manifest: Manifest, index: int) -> str:
    """``~`` and ``$VAR`` in a manifest bind's source, expanded here (never by a shell)."""
    src, sep, rest = bind.partition(":")
    expanded = os.path.expandvars(os.path.expanduser(src))
    if "$" in expanded:
        raise manifest.error(f"container.binds.{index}", f"{bind!r}: environment variable not set")
    return expanded + sep + rest


# ---------------------------------------------------------------- what to submit (I/O: reads job dirs)


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
        self.image = ctr.image_reference(box.runtime, box.image, cwd)
        binds = default_binds(manifest, self.run_root, dict(os.environ), Path.home())
        binds += [_expand_bind(b, manifest, i) for i, b in enumerate(box.binds)]
        self.python = ctr.python_command(
            box.runtime,
            self.image,
            ctr.unique_binds(binds, cwd),
            gpus=manifest.resources.gpus_per_node > 0,
            uid_gid=(os.getuid(), os.getgid()),
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
        self.context["container_digest"] = ctr.image_digest(box.runtime, box.image, box.digest, Path.cwd())

    def sbatch(self, n_jobs: int) -> str:
        return render_sbatch(self.manifest, folder=self.folder, python=self.python, n_jobs=n_jobs)


# ---------------------------------------------------------------- submission (I/O)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_record(job: GridJob, launch: Launch, *, slurm_job_id: str | None, local_pid: int | None) -> None:
    """``submission.json`` (previous attempts kept under ``previous``) and ``spec.json`` if absent."""
    if not (job.run_dir / "spec.json").exists():
        atomic_write_json(job.run_dir / "spec.json", job.spec.to_dict())
    old = read_job_dir(job.run_dir).record
    previous = ([{k: v for k, v in old.items() if k != "previous"}] + old.get("previous", [])) if old else []
    paths = JobPaths(launch.folder, job_id=slurm_job_id or str(local_pid), task_id=0)
    atomic_write_json(
        job.run_dir / RECORD,
        {
            "schema": RECORD_SCHEMA,
            "job_id": job.job_id,
            "study": job.study,
            "executor": launch.kind,
            "slurm_job_id": slurm_job_id,
            "slurm_job_name": slurm_parameters(launch.manifest)["job_name"] if slurm_job_id else None,
            "local_pid": local_pid,
            "submitted": _now(),
            "submitit_folder": str(launch.folder),
            "stdout": str(paths.stdout),
            "stderr": str(paths.stderr),
            "manifest": launch.context["manifest"],
            "previous": previous[:20],
        },
    )


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
    """Submit all jobs as one array; returns their Slurm ids (``<array>_<task>``)."""
    from trajhpc.job import JobTask

    executor = make_slurm_executor(launch)
    try:
        submitted = executor.map_array(JobTask(), *_task_args(jobs, launch))
    except Exception as err:  # sbatch's own message (the last line) is the useful part
        raise TrajhpcError(f"sbatch failed: {last_line(str(err), width=400) or repr(err)}") from None
    ids = [s.job_id for s in submitted]
    for job, slurm_id in zip(jobs, ids):
        write_record(job, launch, slurm_job_id=slurm_id, local_pid=None)
    return ids


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
    except KeyboardInterrupt:
        for _, handle in running.values():
            handle.cancel()
        raise


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


def _action_column(jobs: Sequence[GridJob], groups: dict[str, list[GridJob]]) -> list[str]:
    by_id = {job.job_id: action for action, members in groups.items() for job in members}
    return [by_id[job.job_id] for job in jobs]


def submit_command(
    console: Console,
    manifest_path: Path,
    *,
    dry_run: bool,
    run_root: Path | None,
    executor: str | None,
    wait: bool,
) -> None:
    """``trajhpc submit``: print the plan, then submit (or, with ``--dry-run``, show the sbatch script)."""
    manifest = load_manifest(manifest_path)
    root = Path(run_root) if run_root is not None else Path(manifest.run_root)
    jobs = expand(manifest, root)
    kind = resolve_executor(executor or manifest.executor, shutil.which("sbatch") is not None)
    specs = {job.job_id: job.spec.to_dict() for job in jobs}
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
    launch = Launch(manifest, Path(manifest_path), root, kind)
    if dry_run:
        if not todo:
            console.print("nothing to submit")
        elif kind == "slurm":
            console.print(f"sbatch script for {_jobs(len(todo))} ({launch.folder}):", highlight=False)
            console.out(launch.sbatch(len(todo)), highlight=False)
        else:
            command = submitit_command(launch.python, launch.folder)
            console.print(f"local executor: each job runs `{command}`", highlight=False, soft_wrap=True)
        return
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
            console.print(f"submitted {_jobs(len(ids))} as Slurm {what} (logs in {launch.folder})", highlight=False)
        else:
            run_local(console, todo, launch)
    dirs = [job.run_dir for job in jobs]
    if kind == "slurm" and wait and (todo or groups["leave"]):
        watch_rows(console, lambda: dirs, f"study {manifest.study}", 10.0, until_idle=True, specs=specs)
    elif kind == "local" and todo:
        rows = collect_rows(dirs, specs)
        console.print(counts_line(rows), highlight=False)
