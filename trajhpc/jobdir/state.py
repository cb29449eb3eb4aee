"""``state.json``: where a job stands, written by the job and read by ``status`` and the live view."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from trajhpc.core import provenance
from trajhpc.core.atomic import atomic_write_json
from trajhpc.jobdir.paths import JobDir

_STR, _INT = (str,), (int,)
# The fields readers use, and the JSON types each may have (null always allowed).
STATE_FIELDS = {"state": _STR, "stage": _INT, "n_stages": _INT, "error": _STR, "started": _STR, "updated": _STR,
                "ended": _STR, "slurm_job_id": (str, int), "activity": (dict,)}
RECORD_FIELDS = {"slurm_job_id": (str, int), "slurm_job_name": _STR, "local_pid": _INT, "submitit_folder": _STR,
                 "stderr": _STR}
JSON_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object"}


def write_state(
    job_dir: Path,
    state: str,
    stage: int,
    n_stages: int,
    *,
    started: str,
    error: str | None = None,
    activity: Mapping[str, Any] | None = None,
) -> None:
    """``state.json``; while running, ``activity`` says what the job does now (see docs/CONTRACTS.md)."""
    atomic_write_json(
        JobDir(job_dir).state,
        {
            "state": state,
            "stage": stage,
            "n_stages": n_stages,
            "error": error,
            "started": started,
            "updated": provenance.now_iso(),
            "ended": provenance.now_iso() if state != "running" else None,
            "slurm_job_id": provenance.slurm_job_id(),
            "activity": dict(activity) if activity is not None and state == "running" else None,
        },
    )
