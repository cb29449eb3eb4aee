"""``<job dir>/train_log.jsonl``: one JSON object per optimizer step, appended while a job trains.

Each line is ``{"stage": int, "step": int, "loss": float, "lr": float, "tokens": int,
"tokens_per_s": float, "examples": str}``: the training stage (1..n), the optimizer step
within it (1-based), the step's loss (mean over its supervised tokens), the learning rate
the step used, the supervised (target) tokens in the step, the step's throughput in real
(unpadded, prompt and target) tokens per second of its wall time, and which examples the
step trained on: 12 hex digits of sha256 over the step's example ids (``Record.uid``)
sorted and joined by newlines (trajhpc.job.batching.examples_hash), equal in every arm
of a unit step by step. Logs of recipe-1 jobs have no ``examples``.

Lines are appended and flushed step by step, so a live view (and ``tail -f``) sees them
at once. A job killed mid-stage leaves that stage's first steps in the file; when it is
started again it retrains the stage from the last checkpoint, so it first keeps only the
entries of the checkpoint's stages (:func:`keep_through`): the file of a resumed job
then holds exactly the steps of an uninterrupted run. The log is fsynced before every
checkpoint (:meth:`TrainLog.sync`), so a checkpoint's stages are never missing from it.

Every reader of the file reads it here (:func:`read_train_log`, :func:`tail`), under one
size cap: leniently for the job and the live view (a line torn by a kill is skipped),
strictly for the aggregate (a damaged log is a FileProblem naming its first bad line).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict

from trajhpc.core.atomic import atomic_write_text
from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir.paths import TRAIN_LOG, FileProblem, JobDir, open_regular, read_bytes

FIELDS = ("stage", "step", "loss", "lr", "tokens", "tokens_per_s")  # in every line
OPTIONAL = ("examples",)  # absent from recipe-1 logs
_INTEGERS = ("stage", "step", "tokens")  # the other fields are numbers
_HASH = re.compile(r"[0-9a-f]{12}")
MAX_BYTES = 256 * 2**20  # ~2 million steps; the one cap of every reader of the log


@with_config(ConfigDict(extra="ignore", strict=True, allow_inf_nan=False))
class _StrictEntry(TypedDict):
    """A line as :func:`entry_problem` accepts it in strict mode, stage range aside: validated in one
    pydantic call (a 10,000-job aggregate reads 120,000 lines); a line it refuses is judged again by
    :func:`entry_problem`, which alone words the error."""

    stage: int
    step: Annotated[int, Field(ge=1)]
    loss: float
    lr: float
    tokens: int
    tokens_per_s: float
    examples: NotRequired[Annotated[str, Field(pattern=f"^{_HASH.pattern}$")]]


_STRICT_ENTRY = TypeAdapter(_StrictEntry)


def entry(
    *, stage: int, step: int, loss: float, lr: float, tokens: int, tokens_per_s: float, examples: str = ""
) -> dict[str, Any]:
    """One line's object, in the documented key order (``examples`` left out when empty: a recipe-1 plan)."""
    obj: dict[str, Any] = {"stage": int(stage), "step": int(step), "loss": float(loss), "lr": float(lr),
                           "tokens": int(tokens), "tokens_per_s": round(float(tokens_per_s), 1)}
    if examples:
        obj["examples"] = str(examples)
    return obj


def entry_problem(obj: Any, *, strict: bool = False, n_stages: int | None = None) -> str | None:
    """Why one parsed line is not a log entry (None when it is).

    Both modes want an object with every field, of its type. ``strict`` also wants sane
    values: finite numbers, steps from 1 and, given ``n_stages``, a training stage (1 to
    n_stages). Lenient reading keeps what the job wrote, a diverged step's NaN loss
    included: :func:`keep_through` must never drop a step the job took.
    """
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key in FIELDS:
        if key not in obj:
            return f"no {key!r}"
        value = obj[key]
        if key in _INTEGERS:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"{key} {value!r} is not an integer"
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (strict and not math.isfinite(value)):
            return f"{key} {value!r} is not a number (finite)"
    if "examples" in obj and not (isinstance(obj["examples"], str) and (not strict or _HASH.fullmatch(obj["examples"]))):
        return f"examples {obj['examples']!r} is not a hash of 12 hex digits"
    if strict and n_stages is not None and not 1 <= obj["stage"] <= n_stages:
        return f"stage {obj['stage']} is not a training stage (1 to {n_stages})"
    if strict and obj["step"] < 1:
        return f"step {obj['step']} (steps count from 1 within a stage)"
    return None


def parse(
    data: bytes, *, strict: bool = False, n_stages: int | None = None, path: str | os.PathLike[str] = TRAIN_LOG
) -> list[dict[str, Any]]:
    """The entries in the log's bytes, in file order.

    Lenient: a line torn by a kill, or damaged, is skipped. ``strict``: every line must be
    a sane entry (:func:`entry_problem`); FileProblem ``corrupt`` naming the first that is not.
    """
    if strict:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise FileProblem(path, "corrupt", f"not UTF-8 text (at byte {err.start})") from None
    out = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        if strict:
            try:
                obj = _STRICT_ENTRY.validate_json(line)
            except ValidationError:
                pass
            else:
                if n_stages is None or 1 <= obj["stage"] <= n_stages:
                    out.append(obj)
                    continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser's stack
            if strict:
                raise FileProblem(path, "corrupt", f"line {number} is not valid JSON (truncated or damaged)") from None
            continue
        problem = entry_problem(obj, strict=strict, n_stages=n_stages)
        if problem is None:
            out.append(obj)
        elif strict:
            raise FileProblem(path, "corrupt", f"line {number}: {problem}")
    return out


def read_train_log(
    job_dir: str | os.PathLike[str], *, strict: bool = False, n_stages: int | None = None
) -> list[dict[str, Any]]:
    """The entries of ``<job_dir>/train_log.jsonl``, read whole (at most :data:`MAX_BYTES`).

    Lenient (the job, a live view): the valid entries, torn or damaged lines skipped; []
    when the file is absent; FileProblem when it is unusable (not a regular file, too
    large, unreadable). ``strict`` (the aggregate: a study's curves must not hide damage):
    every line a sane entry of a stage 1 to ``n_stages``, else FileProblem (``missing``
    included) naming the first bad line.
    """
    path = os.path.join(job_dir, TRAIN_LOG)  # a str: the aggregate reads 10,000 logs
    try:
        data = read_bytes(path, max_bytes=MAX_BYTES)
    except FileProblem as problem:
        if problem.kind == "missing" and not strict:
            return []
        raise
    return parse(data, strict=strict, n_stages=n_stages, path=path)


def tail(job_dir: str | os.PathLike[str], window: int = 16 * 1024) -> list[dict[str, Any]]:
    """The last entries (from the last ``window`` bytes, read leniently): what a live view needs; [] when unusable."""
    try:
        with open_regular(JobDir(Path(job_dir)).train_log) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - window))
            data = f.read()
    except (FileProblem, OSError):
        return []
    return parse(data if size <= window else data.split(b"\n", 1)[-1])  # the first line may be cut


def keep_through(job_dir: str | os.PathLike[str], stage: int) -> int:
    """Keep only the entries of stages ``<= stage`` (rewritten atomically); returns how many are kept.

    Called when an attempt starts from the checkpoint of ``stage``: the stage after it is
    trained (again) from its first step.
    """
    path = JobDir(Path(job_dir)).train_log
    try:
        data = read_bytes(path, max_bytes=MAX_BYTES)
    except FileProblem as problem:
        if problem.kind == "missing":
            return 0
        raise TrajhpcError(f"{path}: {problem.detail}; delete it (it is only the training log)") from None
    if not data:
        return 0
    kept = [e for e in parse(data) if e["stage"] <= stage]
    text = "".join(json.dumps(e) + "\n" for e in kept)
    if text.encode() != data:
        atomic_write_text(path, text)
    return len(kept)


class TrainLog:
    """Appends entries to ``<job_dir>/train_log.jsonl``, one line and one flush per step."""

    def __init__(self, job_dir: str | os.PathLike[str]):
        self.path = JobDir(Path(job_dir)).train_log
        self._file = None

    def __enter__(self) -> "TrainLog":
        try:
            self._file = open(self.path, "a", encoding="utf-8")
        except OSError as err:
            raise TrajhpcError(f"cannot write {self.path}: {err.strerror or err}") from err
        return self

    def append(self, obj: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(obj) + "\n")
            self._file.flush()
        except OSError as err:
            raise TrajhpcError(f"cannot write {self.path}: {err.strerror or err}") from err

    def sync(self) -> None:
        """On disk before a checkpoint is: a checkpoint's stages are never missing from the log."""
        try:
            os.fsync(self._file.fileno())
        except OSError as err:
            raise TrajhpcError(f"cannot write {self.path}: {err.strerror or err}") from err

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
