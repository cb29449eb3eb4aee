"""Jobs Slurm still holds, whatever executor a new submit uses.

Before a submit runs again a job whose record names a Slurm id, the controller itself
(``squeue``) is asked once more: sacct lags, and may keep an older job of a reused id,
and a job still pending or running in Slurm must never be rewritten as a local one or
run twice. A local submit says which of its jobs it leaves to Slurm, and why.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from trajhpc.jobdir.snapshot import JobFiles
from trajhpc.launch.slurmquery import SlurmInfo, ask_squeue
from trajhpc.launch.status import ACTIVE_STATES


def slurm_ids(files: Sequence[JobFiles]) -> dict[str, tuple[str, str | None]]:
    """trajhpc job id -> (its recorded Slurm id, the recorded Slurm job name), for jobs Slurm ran last."""
    out = {}
    for f in files:
        record = f.record or {}
        if record.get("slurm_job_id"):
            out[f.job_id] = (str(record["slurm_job_id"]), record.get("slurm_job_name"))
    return out


def still_held(ids: Mapping[str, tuple[str, str | None]], live: Mapping[str, SlurmInfo]) -> dict[str, str]:
    """Of the jobs ``ids`` (as :func:`slurm_ids`), those Slurm lists as pending or running under
    their own job name (an id reused by another job is not theirs): job id -> Slurm state."""
    held = {}
    for job_id, (slurm_id, name) in ids.items():
        info = live.get(slurm_id)
        if info is not None and info.state in ACTIVE_STATES and (not name or not info.name or info.name == name):
            held[job_id] = info.state
    return held


def recheck_before_resubmit(files: Sequence[JobFiles], to_submit: Sequence[str]) -> dict[str, str]:
    """Of the jobs about to be submitted again, those Slurm's controller still holds (job id -> state).
    Slurm not answering leaves the first answer standing."""
    wanted = set(to_submit)
    ids = {j: v for j, v in slurm_ids(files).items() if j in wanted}
    if not ids:
        return {}
    live = ask_squeue(slurm_id for slurm_id, _ in ids.values())
    return still_held(ids, live or {})


def held_message(executor: str, held: Mapping[str, str], files: Sequence[JobFiles]) -> str | None:
    """What a ``local`` submit says about the jobs it leaves to Slurm (None: none, or a Slurm submit)."""
    if executor == "slurm" or not held:
        return None
    ids = slurm_ids(files)
    arrays = sorted({ids[j][0].split("_")[0] for j in held if j in ids})
    n = len(held)
    jobs = f"{n} job{'' if n == 1 else 's'}"
    return (
        f"{jobs} still pending or running in Slurm (job {', '.join(arrays)}): left alone, a local submit "
        f"does not take over a Slurm job (scancel {' '.join(arrays)} first to run {'it' if n == 1 else 'them'} here)"
    )
