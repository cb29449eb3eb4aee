"""A study's submission bookkeeping: one submit at a time, the crash journal, the jobs' records.

``<job dir>/submission.json`` says how a job was last submitted (executor, Slurm id
``<array>_<task>`` or local pid, submitit folder, logs), earlier attempts kept under
``previous``: it is how ``status`` and the next ``submit`` find the job again. It also
records the manifest's ``analysis`` as it stood at submission, with its sha256: the
pre-registration the aggregate checks its analysis against.
``<study>/.submitting.json`` (the journal) lives from just before ``sbatch`` until every
record is written, so a submit killed in between is finished by the next one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from rich.console import Console

from trajhpc.core import locks
from trajhpc.core.atomic import atomic_write_json
from trajhpc.core.errors import TrajhpcError
from trajhpc.core.provenance import now_iso
from trajhpc.jobdir.paths import RECORD_SCHEMA, JobDir
from trajhpc.jobdir.snapshot import read_job_dir
from trajhpc.launch.slurmquery import find_submission
from trajhpc.launch.submitit_adapter import log_paths
from trajhpc.study.comparison import document_sha256
from trajhpc.study.grid import GridJob

LOCK_FILE = ".submit.lock"
LOCK_TIMEOUT_S = 120.0
# Written just before sbatch, removed once every record is written: a submit killed in
# between leaves it, and the next submit finishes the bookkeeping (recover_interrupted).
JOURNAL = ".submitting.json"
JOURNAL_SCHEMA = "trajhpc.submitting/1"


def jobs_phrase(n: int) -> str:
    """``1 job`` / ``N jobs``."""
    return f"{n} job" if n == 1 else f"{n} jobs"


# ---------------------------------------------------------------- records


def write_spec(job: GridJob) -> None:
    """``spec.json`` if absent (the job checks it is its own when it starts)."""
    path = JobDir(job.run_dir).spec
    if not path.exists():
        atomic_write_json(path, job.spec.to_dict())


@dataclass(frozen=True)
class Submitter:
    """What every record of one submission shares."""

    executor: str  # "slurm" or "local"
    folder: Path  # the submitit folder of this submission
    manifest: str | None  # the manifest's absolute path
    job_name: str  # the Slurm job name
    analysis: Mapping[str, Any] | None = None  # the manifest's analysis, defaults filled (Analysis.document)
    overrides: tuple[str, ...] = ()  # the --set texts applied over the manifest file
    effective: Mapping[str, Any] | None = None  # the manifest mapping with them applied (Manifest.effective)


def write_record(job: GridJob, by: Submitter, *, slurm_job_id: str | None, local_pid: int | None) -> None:
    """``submission.json`` (previous attempts kept under ``previous``; the submitter's analysis and its
    sha256) and ``spec.json`` if absent."""
    write_spec(job)
    _write_record(
        job.run_dir, executor=by.executor, folder=by.folder, manifest=by.manifest, job_name=by.job_name,
        slurm_job_id=slurm_job_id, local_pid=local_pid, analysis=by.analysis,
        overrides=list(by.overrides), effective_manifest=by.effective,
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
    analysis: Mapping[str, Any] | None = None,
    **extra: Any,
) -> None:
    old = read_job_dir(run_dir).record
    previous = ([{k: v for k, v in old.items() if k != "previous"}] + old.get("previous", [])) if old else []
    stdout, stderr = log_paths(folder, slurm_job_id or str(local_pid))
    atomic_write_json(
        JobDir(run_dir).record,
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
            "stdout": str(stdout),
            "stderr": str(stderr),
            "manifest": manifest,
            "analysis": dict(analysis) if analysis is not None else None,
            "analysis_sha256": document_sha256(analysis) if analysis is not None else None,
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
                    highlight=False, soft_wrap=True,
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


def write_journal(study_dir: Path, jobs: Sequence[GridJob], by: Submitter) -> None:
    """Before sbatch: which jobs (in array order) go out from which submitit folder."""
    atomic_write_json(
        study_dir / JOURNAL,
        {
            "schema": JOURNAL_SCHEMA,
            "since": now_iso(),
            "folder": str(by.folder),
            "job_name": by.job_name,
            "manifest": by.manifest,
            "analysis": dict(by.analysis) if by.analysis is not None else None,
            "overrides": list(by.overrides),
            "effective_manifest": by.effective,
            "jobs": [job.job_id for job in jobs],
        },
    )


def sbatch_may_have_run(folder: Path) -> bool:
    """Whether a submission from submitit folder ``folder`` may have reached sbatch: submitit
    writes the batch script there (``.submission_file_*.sh``, then ``<id>_submission.sh``) just
    before it calls sbatch, so a folder without one proves sbatch never ran (Slurm need not be asked)."""
    try:
        return any("submission" in entry.name for entry in folder.iterdir())
    except FileNotFoundError:
        return False
    except OSError:
        return True  # unreadable: ask Slurm rather than guess


def recover_interrupted(console: Console, study_dir: Path) -> None:
    """Finish a submit that was killed between sbatch and its records (its journal is still there).

    When its submitit folder holds no batch script, sbatch never ran: the journal goes without
    asking Slurm (a local submit on a machine without Slurm is not stuck). Otherwise the array
    is looked up in Slurm by job name and submitit folder: found, its jobs get their records
    (so they are left alone); not found, the journal goes and they are submitted like any job
    without a record. Slurm unreachable: TrajhpcError (never guess).
    """
    path = study_dir / JOURNAL
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
        job_ids = [str(j) for j in journal["jobs"]]
        folder, job_name = Path(journal["folder"]), str(journal["job_name"])
        since = dt.datetime.fromisoformat(journal["since"])
        analysis = journal.get("analysis") if isinstance(journal.get("analysis"), dict) else None
        # Journals written before --set existed have neither key.
        settings = {key: journal[key] for key in ("overrides", "effective_manifest") if key in journal}
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        console.print(f"ignoring unreadable {path}", highlight=False, soft_wrap=True)
        path.unlink(missing_ok=True)
        return
    if not sbatch_may_have_run(folder):
        console.print(
            f"an earlier submit of {jobs_phrase(len(job_ids))} stopped before it called sbatch "
            f"(nothing in {folder}): they are submitted again",
            highlight=False, soft_wrap=True,
        )
        path.unlink(missing_ok=True)
        return
    try:
        array = find_submission(job_name, folder, since)
    except TrajhpcError as err:
        raise TrajhpcError(
            f"{err}; an earlier submit of study {study_dir.name} was interrupted and trajhpc will not guess "
            f"whether its {jobs_phrase(len(job_ids))} are queued (delete {path} if you know they are not)"
        ) from None
    if array:
        for i, job_id in enumerate(job_ids):
            run_dir = study_dir / job_id
            if not run_dir.is_dir():
                continue
            slurm_id = f"{array}_{i}" if len(job_ids) > 1 else array
            _write_record(
                run_dir, executor="slurm", folder=folder, manifest=journal.get("manifest"), job_name=job_name,
                slurm_job_id=slurm_id, local_pid=None, analysis=analysis, recovered=True, **settings,
            )
        console.print(
            f"an earlier submit was interrupted after Slurm accepted its {jobs_phrase(len(job_ids))} "
            f"(job {array}): recorded them",
            highlight=False, soft_wrap=True,
        )
    else:
        console.print(
            f"an earlier submit was interrupted before Slurm accepted its {jobs_phrase(len(job_ids))}: "
            "they are submitted again",
            highlight=False, soft_wrap=True,
        )
    path.unlink(missing_ok=True)
