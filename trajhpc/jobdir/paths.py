"""The job directory: the names of its files (:class:`JobDir`, and :class:`CheckpointDir` for the
checkpoint folder's), one safe reader and one way to find job directories.

``trajhpc status`` and ``trajhpc aggregate`` both list jobs with :func:`find_job_dirs`
and read their files with :func:`read_json_file`, so they agree on which jobs exist
and on why one cannot be read. Nothing here raises for bad job content: a file is
``missing``, ``corrupt`` (not a regular file, too large, not UTF-8, not JSON, nested
too deeply, of the wrong shape) or ``unreadable`` (the operating system refused),
always with a reason. A FIFO or device in place of a file is never read, so a reader
never hangs on one.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Literal

from trajhpc.core.errors import TrajhpcError

# Far above what a job writes (metrics.json of a large study is a few hundred kB; a
# spec.json nests about 4 levels, metrics.json 6).
MAX_BYTES = 16 * 2**20
MAX_DEPTH = 64
# The files of <run_root>/<study>/<job id>/ (docs/ARCHITECTURE.md says who writes each).
SPEC = "spec.json"
STATE = "state.json"
METRICS = "metrics.json"
TOKENS = "tokens.json"
RECORD = "submission.json"  # how the job was last submitted
TRAIN_LOG = "train_log.jsonl"  # one line per optimizer step (trajhpc.jobdir.trainlog)
PREDICTIONS = "predictions"
CHECKPOINT = "checkpoint"
# A new checkpoint is written into CHECKPOINT_TMP, then swapped in: CHECKPOINT -> CHECKPOINT_OLD,
# CHECKPOINT_TMP -> CHECKPOINT (trajhpc.job.checkpoint repairs a swap cut between the two).
CHECKPOINT_TMP = ".checkpoint.tmp"
CHECKPOINT_OLD = ".checkpoint.old"
LOCK = ".lock"  # held by the process running the job (trajhpc.core.locks)
# The files of a checkpoint folder. The adapter folder is peft's ``save_pretrained`` output.
ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"
TRAINER_STATE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
RECORD_SCHEMA = "trajhpc.submission/1"
# A folder holding any of these is a job directory (spec.json missing is then an error).
JOB_FILES = (SPEC, METRICS, TOKENS)


@dataclass(frozen=True)
class JobDir:
    """Where each file of one job directory lives; the one place that spells their names."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / SPEC

    @property
    def state(self) -> Path:
        return self.path / STATE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def tokens(self) -> Path:
        return self.path / TOKENS

    @property
    def record(self) -> Path:
        return self.path / RECORD

    @property
    def train_log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def checkpoint_tmp(self) -> Path:
        return self.path / CHECKPOINT_TMP

    @property
    def checkpoint_old(self) -> Path:
        return self.path / CHECKPOINT_OLD

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def predictions(self, stage: int) -> Path:
        """The prediction rows of the evaluation after ``stage``."""
        return self.path / PREDICTIONS / f"stage-{stage}.jsonl"


@dataclass(frozen=True)
class CheckpointDir:
    """Where each file of one checkpoint folder lives (``checkpoint/``, or the temp or old one of a swap)."""

    path: Path

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    @property
    def adapter_weights(self) -> Path:
        return self.path / ADAPTER / ADAPTER_WEIGHTS

    @property
    def adapter_config(self) -> Path:
        return self.path / ADAPTER / ADAPTER_CONFIG

    @property
    def optimizer(self) -> Path:
        return self.path / OPTIMIZER

    @property
    def scheduler(self) -> Path:
        return self.path / SCHEDULER

    @property
    def rng(self) -> Path:
        return self.path / RNG

    @property
    def state(self) -> Path:
        return self.path / TRAINER_STATE


Kind = Literal["missing", "corrupt", "unreadable"]

_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
          stat.S_IFBLK: "a device"}


class FileProblem(Exception):
    """Why a job file (or the job directory itself) cannot be used.

    ``kind`` is ``missing``, ``corrupt`` or ``unreadable``; ``reason`` says why in a few
    words; ``str()`` is ``<name>: <kind>: <reason>`` (``<name>: missing`` when missing).
    """

    def __init__(self, path: str | os.PathLike[str], kind: Kind, reason: str = ""):
        # Kept as given: the aggregate meets tens of thousands of missing optional files, and a
        # Path per problem was a measurable share of its reading.
        self._path, self.kind, self.reason = path, kind, reason
        super().__init__(f"{os.path.basename(path)}: {self.detail}")

    @property
    def path(self) -> Path:
        return Path(self._path)

    @property
    def detail(self) -> str:
        """``corrupt: not valid JSON at line 3`` (the kind and the reason, without the file name)."""
        return f"{self.kind}: {self.reason}" if self.reason else self.kind


def _os_reason(err: OSError) -> str:
    return (err.strerror or type(err).__name__).lower()


_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def _open_regular_fd(path: str | os.PathLike[str], max_bytes: int | None) -> tuple[int, int]:
    """(descriptor, size) of a regular file of at most ``max_bytes``; FileProblem otherwise.

    Opened without blocking (a FIFO with no writer would block a plain ``open``) and
    checked with ``fstat`` before a single byte is read.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise FileProblem(path, "missing") from None
    except OSError as err:
        raise FileProblem(path, "unreadable", _os_reason(err)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
            raise FileProblem(path, "corrupt", f"not a regular file ({what})")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileProblem(path, "corrupt", f"larger than {max_bytes:,} bytes ({st.st_size:,})")
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> BinaryIO:
    """A regular file (of at most ``max_bytes`` when given) opened for binary reading;
    FileProblem (missing, corrupt, unreadable) otherwise. Never blocks on a FIFO."""
    fd, _ = _open_regular_fd(path, max_bytes)
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; FileProblem otherwise.

    Read straight from the descriptor (no file object: the aggregate reads three files per
    job), in one call when the file is as long as ``fstat`` said, until end of file otherwise.
    """
    fd, size = _open_regular_fd(path, max_bytes)
    try:
        chunks = [os.read(fd, size + 1)]
        if len(chunks[0]) != size:  # a short read, or the file grew since fstat: on to end of file
            while chunks[-1] and sum(map(len, chunks)) <= max_bytes:
                chunks.append(os.read(fd, max_bytes + 1))
    except OSError as err:
        raise FileProblem(path, "unreadable", _os_reason(err)) from None
    finally:
        os.close(fd)
    raw = b"".join(chunks) if len(chunks) > 1 else chunks[0]
    if len(raw) > max_bytes:  # grew while being read
        raise FileProblem(path, "corrupt", f"larger than {max_bytes:,} bytes")
    return raw


_STRING = re.compile(rb'"[^"]*"')
_NOT_QUOTE_OR_BRACKET = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")


def nested_deeper_than(raw: bytes, max_depth: int) -> bool:
    """Does this (valid) JSON text nest arrays and objects deeper than ``max_depth``?

    Strings are removed, then every pass deletes the innermost bracket pairs: a text
    left non-empty after ``max_depth`` passes is deeper. C-speed passes, so a large file
    of brackets costs at most ``max_depth`` scans. Escaped backslashes and quotes go
    first (neither ends a string), then every byte but quotes and brackets, so the
    string pass runs over a few hundred bytes, not the document (the aggregate checks
    three documents per job). Braces become square brackets on the way (the text is
    valid JSON, so only depth matters, not which pair is which): a pass is then one
    ``bytes.replace``, which never rescans what it has just joined.
    """
    if raw.count(b"{") + raw.count(b"[") <= max_depth:  # not enough brackets to nest that deep
        return False
    if b"\\" in raw:  # rare in job files, and the two replaces cost more than the rest
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = raw.translate(_BRACES_AS_BRACKETS, _NOT_QUOTE_OR_BRACKET)
    # '""' is an empty string or two adjacent ones merged: string content either way.
    kept = kept.replace(b'""', b"")
    brackets = _STRING.sub(b"", kept) if b'"' in kept else kept
    for _ in range(max_depth):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def parse_json(raw: bytes, path: str | os.PathLike[str], *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse UTF-8 JSON text; FileProblem ``corrupt`` naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileProblem(path, "corrupt", f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise FileProblem(path, "corrupt", f"not valid JSON at line {err.lineno} (truncated or damaged)") from None
    except RecursionError:
        raise FileProblem(path, "corrupt", f"nested deeper than {max_depth} levels") from None
    if nested_deeper_than(raw, max_depth):
        raise FileProblem(path, "corrupt", f"nested deeper than {max_depth} levels")
    return value


def read_json_file(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """The JSON value in a regular file; FileProblem (missing, corrupt, unreadable) otherwise."""
    return parse_json(read_bytes(path, max_bytes=max_bytes), path, max_depth=max_depth)


def read_json_object(path: str | os.PathLike[str], **limits: int) -> dict[str, Any] | None:
    """A JSON object file; None when missing; FileProblem when corrupt or unreadable."""
    try:
        value = read_json_file(path, **limits)
    except FileProblem as problem:
        if problem.kind == "missing":
            return None
        raise
    if not isinstance(value, dict):
        raise FileProblem(path, "corrupt", f"expected a JSON object, got {type(value).__name__}")
    return value


def dir_problem(path: str | os.PathLike[str]) -> FileProblem | None:
    """Why a job directory cannot be read (None when it can, or does not exist yet).

    A symbolic link is never followed: :func:`find_job_dirs` lists one only when it
    leads out of the folders searched.
    """
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return FileProblem(path, "unreadable", f"a symbolic link to {os.path.realpath(path)}, not followed")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None if not os.path.lexists(path) else FileProblem(path, "corrupt", "not a folder")
    except OSError as err:
        return FileProblem(path, "unreadable", f"cannot open the job directory ({_os_reason(err)})")
    os.close(fd)
    return None


# ---------------------------------------------------------------- discovery


def _looks_like_job(folder: str) -> bool:
    """Holds a job file, or cannot be looked into (then the readers say why)."""
    for name in JOB_FILES:
        try:
            os.lstat(os.path.join(folder, name))
            return True
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return True
    return False


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def find_job_dirs(roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every job directory at or under the roots (a job dir, a study dir or a run root), sorted.

    A job directory holds spec.json, metrics.json or tokens.json; its own subfolders
    are not searched, nor are hidden folders (``.submitit``). A folder that cannot be
    searched is listed (reading it then says why) rather than silently left out.
    Symbolic links below a root are not followed, so a loop never loops: one leading
    back into the searched folders is skipped (its target is listed under its real
    path), one leading out of them is listed, and reading it says it was not followed.
    Roots are resolved (symbolic links followed) and a job found twice is listed once.
    An unreadable root is a TrajhpcError.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    tops = [os.path.realpath(r) for r in roots]
    found: set[str] = set()
    seen: set[tuple[int, int]] = set()
    for top in tops:
        stack = [top]
        while stack:
            folder = stack.pop()
            if _looks_like_job(folder):
                found.add(folder)
                continue
            try:
                st = os.stat(folder)
                if (st.st_dev, st.st_ino) in seen:  # a bind mount loop, or a root given twice
                    continue
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(folder) as it:
                    entries = [e for e in it if not e.name.startswith(".")]
            except OSError as err:
                if folder == top:
                    raise TrajhpcError(f"{folder}: cannot read this folder ({_os_reason(err)})") from None
                found.add(folder)  # unreadable: listed with the reason
                continue
            for entry in entries:
                try:
                    if entry.is_symlink():
                        if entry.is_dir() and not any(_inside(os.path.realpath(entry.path), t) for t in tops):
                            found.add(entry.path)
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                except OSError:
                    found.add(entry.path)
    return [Path(p) for p in sorted(found)]
