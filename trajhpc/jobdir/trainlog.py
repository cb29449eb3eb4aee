"""``<job dir>/train_log.jsonl``: one JSON object per optimizer step, appended while a job trains.

Each line is ``{"stage": int, "step": int, "loss": float, "lr": float, "tokens": int,
"tokens_per_s": float}``: the training stage (1..n), the optimizer step within it
(1-based), the step's loss (mean over its supervised tokens), the learning rate the step
used, the supervised (target) tokens in the step, and the step's throughput in real
(unpadded, prompt and target) tokens per second of its wall time.

Lines are appended and flushed step by step, so a live view (and ``tail -f``) sees them
at once. A job killed mid-stage leaves that stage's first steps in the file; when it is
started again it retrains the stage from the last checkpoint, so it first keeps only the
entries of the checkpoint's stages (:func:`keep_through`): the file of a resumed job
then holds exactly the steps of an uninterrupted run. The log is fsynced before every
checkpoint (:meth:`TrainLog.sync`), so a checkpoint's stages are never missing from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trajhpc.core.atomic import atomic_write_text
from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir.paths import FileProblem, open_regular

TRAIN_LOG = "train_log.jsonl"
FIELDS = ("stage", "step", "loss", "lr", "tokens", "tokens_per_s")
MAX_BYTES = 256 * 2**20  # ~2 million steps


def entry(*, stage: int, step: int, loss: float, lr: float, tokens: int, tokens_per_s: float) -> dict[str, Any]:
    """One line's object, in the documented key order."""
    return {"stage": int(stage), "step": int(step), "loss": float(loss), "lr": float(lr), "tokens": int(tokens),
            "tokens_per_s": round(float(tokens_per_s), 1)}


def _valid(obj: Any) -> bool:
    return (
        isinstance(obj, dict) and set(FIELDS) <= set(obj)
        and all(isinstance(obj[k], int) and not isinstance(obj[k], bool) for k in ("stage", "step", "tokens"))
        and all(isinstance(obj[k], (int, float)) and not isinstance(obj[k], bool) for k in ("loss", "lr", "tokens_per_s"))
    )


def parse(data: bytes) -> list[dict[str, Any]]:
    """The valid entries of the file's bytes; a line torn by a kill, or damaged, is skipped."""
    out = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if _valid(obj):
            out.append(obj)
    return out


def _read(path: Path, window: int | None) -> bytes:
    """The file's bytes (its last ``window`` bytes); b"" when absent; FileProblem when not a regular file."""
    try:
        f = open_regular(path)
    except FileProblem as problem:
        if problem.kind == "missing":
            return b""
        raise
    with f:
        size = os.fstat(f.fileno()).st_size
        if window is None:
            if size > MAX_BYTES:
                raise FileProblem(path, "corrupt", f"larger than {MAX_BYTES // 2**20} MiB")
            return f.read()
        f.seek(max(0, size - window))
        data = f.read()
        return data if size <= window else data.split(b"\n", 1)[-1]  # the first line may be cut


def read_train_log(job_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every valid entry of ``<job_dir>/train_log.jsonl`` ([] when it is absent); FileProblem when unusable."""
    return parse(_read(Path(job_dir) / TRAIN_LOG, None))


def tail(job_dir: str | os.PathLike[str], window: int = 16 * 1024) -> list[dict[str, Any]]:
    """The last entries (from the last ``window`` bytes): what a live view needs; [] when unusable."""
    try:
        return parse(_read(Path(job_dir) / TRAIN_LOG, window))
    except (FileProblem, OSError):
        return []


def keep_through(job_dir: str | os.PathLike[str], stage: int) -> int:
    """Keep only the entries of stages ``<= stage`` (rewritten atomically); returns how many are kept.

    Called when an attempt starts from the checkpoint of ``stage``: the stage after it is
    trained (again) from its first step.
    """
    path = Path(job_dir) / TRAIN_LOG
    try:
        data = _read(path, None)
    except FileProblem as problem:
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
        self.path = Path(job_dir) / TRAIN_LOG
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
