"""Asking Slurm about jobs: one ``sacct`` call for many ids, ``squeue`` for what it lacks,
and finding a submission by its submitit folder. Raises TrajhpcError when Slurm cannot be asked."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, NamedTuple

from trajhpc.core.errors import TrajhpcError, last_line
from trajhpc.launch.submitit_adapter import parse_slurm_table

# A recorded job its scheduler no longer knows (purged from Slurm, local process gone).
GONE = "GONE"


def normalize_slurm_state(raw: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``RUNNING+`` -> ``RUNNING``."""
    return raw.strip().split(" ")[0].rstrip("+").upper() if raw.strip() else GONE


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str] | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


class SlurmInfo(NamedTuple):
    """What Slurm says about one job id: its state and its job name."""

    state: str
    name: str


_SLURM_COLUMNS = "JobID|State|NodeList|JobName"


def _parse_table(text: str) -> dict[str, SlurmInfo]:
    """``JobID|State|...`` lines -> {job id or array task id: info}, ranges expanded (submitit's parser)."""
    return {
        jid: SlurmInfo(normalize_slurm_state(info.get("State", "")), info.get("JobName", ""))
        for jid, info in parse_slurm_table(text).items()
    }


def _squeue_ok(out: subprocess.CompletedProcess[str] | None) -> bool:
    # squeue -j exits 1 when none of the ids is known any more: an answer, not a failure.
    return out is not None and (out.returncode == 0 or "Invalid job id" in out.stderr)


def query_slurm(ids: Iterable[str]) -> dict[str, SlurmInfo]:
    """Slurm's view of job ids (``123`` or ``123_4``): one ``sacct`` call, then ``squeue`` for the rest.

    Ids neither knows are left out. Raises TrajhpcError when Slurm can't be asked at all.
    """
    return ask_slurm(ids)[0]


def ask_slurm(ids: Iterable[str]) -> tuple[dict[str, SlurmInfo], set[str]]:
    """:func:`query_slurm`, plus the job (array) ids Slurm listed any task of."""
    ids = sorted(set(ids))
    if not ids:
        return {}, set()
    masters = sorted({i.split("_")[0] for i in ids})
    found: dict[str, SlurmInfo] = {}
    sacct = _run(["sacct", "-X", "--parsable2", "-o", _SLURM_COLUMNS.replace("|", ","), "-j", ",".join(masters)])
    sacct_ok = sacct is not None and sacct.returncode == 0
    if sacct_ok:
        found.update(_parse_table(sacct.stdout))
    # sacct lags slurmctld by seconds and needs accounting; squeue knows every live job
    # (and recently ended ones) straight from the controller. It is asked for the
    # recorded ids, whoever submitted them: in a shared study a colleague's jobs count too.
    if not sacct_ok or any(i not in found for i in ids):
        squeue = _run(["squeue", "-h", "--states=all", "-j", ",".join(masters), "-o", "%i|%T|%N|%j"])
        if _squeue_ok(squeue):
            live = _parse_table(_SLURM_COLUMNS + "\n" + squeue.stdout)
            found.update({i: info for i, info in live.items() if i.split("_")[0] in masters})
        elif not sacct_ok:
            why = (sacct.stderr if sacct else "sacct not found").strip() or "no output"
            raise TrajhpcError(f"cannot ask Slurm about the recorded jobs ({last_line(why)}); is the cluster up?")
    seen = {i.split("_")[0] for i in found}
    return {i: found[i] for i in ids if i in found}, seen


def ask_squeue(ids: Iterable[str]) -> dict[str, SlurmInfo] | None:
    """What the controller itself (``squeue``) lists of these job ids, ranges expanded; None when it
    cannot be asked. Ids it does not list are left out."""
    ids = sorted(set(ids))
    masters = sorted({i.split("_")[0] for i in ids})
    if not masters:
        return {}
    squeue = _run(["squeue", "-h", "--states=all", "-j", ",".join(masters), "-o", "%i|%T|%N|%j"])
    if not _squeue_ok(squeue):
        return None
    live = _parse_table(_SLURM_COLUMNS + "\n" + squeue.stdout)
    return {i: live[i] for i in ids if i in live}


def find_submission(job_name: str, folder: str | Path, since: dt.datetime) -> str | None:
    """The Slurm job (array) id submitted from submitit folder ``folder``, "" when Slurm has none.

    For a submission interrupted between ``sbatch`` and its records: submitit's batch
    script lives in that folder, and squeue shows it as the job's command, sacct in its
    SubmitLine. Raises TrajhpcError when Slurm can't be asked at all.
    """
    marker = str(folder).rstrip("/") + "/"
    squeue = _run(["squeue", "-h", "--states=all", f"--name={job_name}", "-o", "%i|%o"])
    squeue_ok = _squeue_ok(squeue)
    for line in squeue.stdout.splitlines() if squeue_ok and squeue else []:
        jid, _, command = line.partition("|")
        if command.strip().startswith(marker):
            return jid.strip().split("_")[0]
    start = (since - dt.timedelta(minutes=5)).astimezone().strftime("%Y-%m-%dT%H:%M:%S")  # sacct: local time
    sacct = _run(["sacct", "-X", "-n", "--parsable2", f"--name={job_name}", "-S", start, "-o", "JobID,SubmitLine"])
    if sacct is not None and sacct.returncode == 0:
        for line in sacct.stdout.splitlines():
            jid, _, submit_line = line.partition("|")
            if marker in submit_line:
                return jid.strip().split("_")[0]
        return ""
    if squeue_ok:
        return ""
    why = (squeue.stderr if squeue else "squeue not found").strip() or "no output"
    raise TrajhpcError(f"cannot ask Slurm whether the interrupted submission reached it ({last_line(why)})")
