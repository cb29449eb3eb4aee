"""Every use of submitit's private API, in one place.

submitit renders the sbatch script, converts memory, names the log files, lists the
job-environment variables and parses ``sacct`` output with functions that are not part
of its public API, and runs a task and the local controller as private modules
(``submitit.core._submit``, ``submitit.local._local``). trajhpc reaches them only through this module, so a submitit upgrade
that moves one breaks here, caught by the golden sbatch test (tests/launch/test_launch.py).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from submitit.core.utils import JobPaths
from submitit.local.local import LocalJobEnvironment
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJobEnvironment, _convert_mem, _make_sbatch_string

if TYPE_CHECKING:
    from trajhpc.study.manifest import Manifest

# The module submitit's local controller runs as (`python -m submitit.local._local <folder>`).
LOCAL_CONTROLLER_MODULE = "submitit.local._local"


def task_command(python: str, folder: Path) -> str:
    """The task command line, exactly as submitit's executors build it."""
    return " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])


def convert_mem(mem_gb: float) -> str:
    """Memory in sbatch's units, as submitit writes it (``2GB`` -> ``2GB``, ``0.5`` -> ``512MB``)."""
    return _convert_mem(mem_gb)


def sbatch_string(*, command: str, folder: Path, map_count: int | None, **parameters: Any) -> str:
    """The sbatch script submitit writes for these ``SlurmExecutor`` parameters."""
    return _make_sbatch_string(command=command, folder=folder, map_count=map_count, **parameters)


def log_paths(folder: Path, job_id: str) -> tuple[Path, Path]:
    """(stdout, stderr) that submitit gives task 0 of ``job_id`` in ``folder``."""
    paths = JobPaths(folder, job_id=job_id, task_id=0)
    return paths.stdout, paths.stderr


def job_environment_names() -> tuple[str, ...]:
    """The variables submitit's local and Slurm job environments read inside a task."""
    return (*LocalJobEnvironment._env.values(), *SlurmJobEnvironment._env.values())


def parse_slurm_table(text: str) -> dict[str, dict[str, str]]:
    """``JobID|State|...`` lines -> {job id or array task id: {column: value}}, ranges expanded."""
    return SlurmInfoWatcher().read_info(text)


# One thread per allocated CPU: torch's default counts the node's cores.
SLURM_SETUP = ("export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",)


def slurm_parameters(manifest: Manifest) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` keywords for the manifest's resources (submitit's names)."""
    res = manifest.resources
    params: dict[str, Any] = {
        "job_name": f"trajhpc-{manifest.study}",
        "time": res.timeout_min,
        "mem": convert_mem(res.mem_gb),
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


def render_sbatch(manifest: Manifest, *, folder: Path, python: str, n_jobs: int) -> str:
    """The sbatch script submitit writes for ``n_jobs`` jobs (an array when n > 1), rendered by submitit itself."""
    map_count = n_jobs if n_jobs > 1 else None  # submitit submits a single job as a plain job
    return sbatch_string(
        command=task_command(python, folder), folder=folder, map_count=map_count, **slurm_parameters(manifest)
    )
