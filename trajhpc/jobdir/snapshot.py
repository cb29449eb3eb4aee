"""The lenient reader: a snapshot of one job directory that never raises for bad content.

``status``, the live view and the local runner show damage as a label instead of stopping;
the strict readers (:mod:`trajhpc.jobdir.documents`) are for the aggregate and the job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir.paths import FileProblem, JobDir, dir_problem, read_json_object
from trajhpc.jobdir.state import JSON_TYPE_NAMES, RECORD_FIELDS, STATE_FIELDS
from trajhpc.spec import SPEC_SCHEMA, spec_from_dict


@dataclass(frozen=True)
class JobFiles:
    """What one job directory holds (None where a file is absent or unusable).

    ``problems`` says why files (or the folder) could not be used, corrupt or
    unreadable; fields of the wrong type are dropped from ``state`` and ``record``.
    """

    job_id: str
    run_dir: Path
    spec: dict[str, Any] | None
    state: dict[str, Any] | None
    complete: bool
    record: dict[str, Any] | None
    problems: tuple[FileProblem, ...] = ()


def _checked(doc: dict[str, Any], path: Path, fields: Mapping[str, tuple[type, ...]], problems: list) -> dict[str, Any]:
    """``doc`` without the fields of the wrong type; a FileProblem for each one in ``problems``."""
    clean = dict(doc)
    for key, types in fields.items():
        value = doc.get(key)
        if value is None or (isinstance(value, types) and not isinstance(value, bool)):
            continue
        expected = " or ".join(JSON_TYPE_NAMES[t] for t in types)
        got = JSON_TYPE_NAMES.get(type(value), type(value).__name__)
        problems.append(FileProblem(path, "corrupt", f"{key}: expected {expected} or null, got {got}"))
        del clean[key]
    return clean


def _read(path: Path, problems: list[FileProblem]) -> dict[str, Any] | None:
    try:
        return read_json_object(path)
    except FileProblem as problem:
        problems.append(problem)
        return None


def _spec_problem(spec: Any, run_dir: Path) -> FileProblem | None:
    """Is spec.json a valid spec, and (when trajhpc wrote it: it names its schema) this folder's?"""
    path = JobDir(run_dir).spec
    try:
        job_id = spec_from_dict(spec).job_id
    except TrajhpcError as err:
        return FileProblem(path, "corrupt", str(err).removeprefix("<input>: "))
    if spec.get("schema") == SPEC_SCHEMA and job_id != run_dir.name:
        return FileProblem(path, "corrupt", f"spec does not match folder (it hashes to {job_id})")
    return None


def read_job_dir(run_dir: Path, spec: Mapping[str, Any] | None = None) -> JobFiles:
    """Read spec.json (``spec`` if absent), state.json, metrics.json (complete flag only) and submission.json.

    Never raises for bad content: a file that is corrupt or unreadable (a FIFO, damaged
    JSON, a field of the wrong type, a spec that is not this folder's) is a problem.
    """
    problems: list[FileProblem] = []
    folder = dir_problem(run_dir)
    if folder is not None:
        return JobFiles(run_dir.name, run_dir, dict(spec) if spec else None, None, False, None, (folder,))
    metrics = _read(JobDir(run_dir).metrics, problems)
    complete = bool(metrics) and metrics.get("complete") is True
    if metrics is not None and not isinstance(metrics.get("complete", False), bool):
        got = JSON_TYPE_NAMES.get(type(metrics["complete"]), "null")
        problems.append(FileProblem(JobDir(run_dir).metrics, "corrupt", f"complete: expected true or false, got {got}"))
    own_spec = _read(JobDir(run_dir).spec, problems)
    if own_spec is not None:
        if (bad := _spec_problem(own_spec, run_dir)) is not None:
            problems.append(bad)
    elif spec is None and os.path.isdir(run_dir) and not os.path.lexists(JobDir(run_dir).spec):
        problems.append(FileProblem(JobDir(run_dir).spec, "missing"))
    state = _read(JobDir(run_dir).state, problems)
    record = _read(JobDir(run_dir).record, problems)
    return JobFiles(
        job_id=run_dir.name,
        run_dir=run_dir,
        spec=own_spec or (dict(spec) if spec else None),
        state=_checked(state, JobDir(run_dir).state, STATE_FIELDS, problems) if state is not None else None,
        complete=complete,
        record=_checked(record, JobDir(run_dir).record, RECORD_FIELDS, problems) if record is not None else None,
        problems=tuple(problems),
    )
