"""Where and with what a job ran: versions, commit, container, host, Slurm ids, peak memory.

None of this changes what is computed, so it stays out of the JobSpec (and the
job id) and goes into ``metrics.json`` ``provenance`` / ``resources``.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import trajhpc

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def slurm_job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """``ARRAYJOB_TASK`` for an array task, else the plain job id, else None (not under Slurm)."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def git_commit(where: Path | None = None) -> str | None:
    """Commit of the checkout holding the package, if it is one (a pip install is not)."""
    where = where or Path(trajhpc.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def collect(context: Mapping[str, Any] | None = None, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Provenance of this process; ``context`` (from the launcher) wins over the environment."""
    context = dict(context or {})
    prov: dict[str, Any] = {
        "trajhpc": trajhpc.__version__,
        "git_commit": git_commit(),
        "container_image": context.pop("container_image", None) or env.get("TRAJHPC_CONTAINER_IMAGE"),
        "container_digest": context.pop("container_digest", None) or env.get("TRAJHPC_CONTAINER_DIGEST"),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in LIBRARIES},
        "hostname": socket.gethostname(),
        "slurm_job_id": slurm_job_id(env),
        "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
        "argv": list(sys.argv),
        "started": now_iso(),
        "ended": None,
    }
    if context:
        prov["context"] = context  # anything else the launcher wants recorded
    return prov


def peak_memory_bytes(device_type: str) -> int:
    """Peak GPU memory allocated by torch on CUDA, else the process's max RSS."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB
