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
from typing import Any

from submitit.core.utils import JobPaths
from submitit.local.local import LocalJobEnvironment
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJobEnvironment, _convert_mem, _make_sbatch_string

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
