"""Running each job inside the project's container image (Apptainer on clusters, Docker on workstations).

submitit starts a task as ``<python> -u -m submitit.core._submit <folder>``; putting the
container in front of the interpreter (``apptainer exec ... IMAGE python3``) is all it
takes, so the scheduler, the pickles and the requeue logic stay submitit's.

Every value from a manifest that reaches a shell line is validated here (no newlines,
no option injection, ``src[:dst[:opts]]`` binds only) and then ``shlex``-quoted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Literal, Sequence

from submitit.local.local import LocalJobEnvironment
from submitit.slurm.slurm import SlurmJobEnvironment

Runtime = Literal["apptainer", "docker", "none"]

# An image is a file path, a registry reference (`ghcr.io/x/y:tag@sha256:...`) or an
# Apptainer URI (`docker://...`, `oras://...`): none of them needs spaces, quotes or
# a leading dash (which the runtime would read as an option).
_IMAGE = re.compile(r"[A-Za-z0-9._/~+][A-Za-z0-9._/~+:@=-]*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BIND_OPTS = {"ro", "rw", "z", "Z"}
# Hashing a multi-GB image on every submit would be slow on network file systems.
HASH_LIMIT_BYTES = 4 * 1024**3

# What the job process inside `docker run` must see (Docker, unlike Apptainer, passes no
# host environment): submitit's own job-environment variables plus the caches and switches.
_PASSED_ENV = (
    "SUBMITIT_EXECUTOR",
    *LocalJobEnvironment._env.values(),
    *SlurmJobEnvironment._env.values(),
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "TRAJHPC_CACHE",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)


# ---------------------------------------------------------------- validation (pure)


def _one_line(value: str, what: str) -> None:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} must not contain newlines or control characters")


def check_image(image: str) -> str:
    """A container image path or reference; raises ValueError for anything unsafe."""
    _one_line(image, "image")
    if not _IMAGE.fullmatch(image):
        raise ValueError(
            f"image {image!r} is not a file path or image reference "
            "(letters, digits and . _ / ~ + : @ = -, not starting with '-')"
        )
    return image


def check_digest(digest: str) -> str:
    """``sha256:`` followed by 64 lower-case hex digits."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"digest {digest!r} must look like sha256:<64 hex digits>")
    return digest


def check_bind(bind: str) -> str:
    """``src[:dst[:opts]]``: src absolute or relative, dst absolute, opts from ro/rw/z/Z."""
    _one_line(bind, "bind")
    parts = bind.split(":")
    if len(parts) > 3:
        raise ValueError(f"bind {bind!r} has more than src:dst:opts (':' is not allowed inside a path)")
    src, dst, opts = (parts + [None, None])[:3]
    if not src or src.startswith("-"):
        raise ValueError(f"bind {bind!r} needs a source path that does not start with '-'")
    if dst is not None and not dst.startswith("/"):
        raise ValueError(f"bind {bind!r}: the destination must be an absolute path")
    if opts is not None and not set(opts.split(",")) <= _BIND_OPTS:
        raise ValueError(f"bind {bind!r}: options must be a comma list of {', '.join(sorted(_BIND_OPTS))}")
    return bind


# ---------------------------------------------------------------- command lines (pure)


def absolute_bind(bind: str, cwd: Path) -> str:
    """``src[:dst[:opts]]`` with src made absolute and dst defaulting to src (same paths inside)."""
    parts = bind.split(":")
    src = str((cwd / parts[0]).resolve()) if not os.path.isabs(parts[0]) else os.path.normpath(parts[0])
    dst = parts[1] if len(parts) > 1 else src
    return src if dst == src and len(parts) < 3 else ":".join([src, dst, *parts[2:]])


def unique_binds(binds: Iterable[str], cwd: Path) -> list[str]:
    """Absolute binds, first occurrence of each destination wins (the runtimes refuse duplicates)."""
    out: dict[str, str] = {}
    for bind in binds:
        full = absolute_bind(check_bind(bind), cwd)
        out.setdefault((full.split(":") + [full])[1], full)
    return list(out.values())


def python_command(
    runtime: Runtime,
    image: str | None,
    binds: Sequence[str],
    *,
    gpus: bool,
    uid_gid: tuple[int, int] | None = None,
) -> str | None:
    """The shell command that replaces ``python`` for a containerised task; None without a container.

    ``binds`` must already be absolute (``unique_binds``). Docker runs as ``uid_gid`` so
    the files the job writes stay the user's.
    """
    if runtime == "none":
        return None
    assert image is not None, "manifest validation guarantees an image"
    check_image(image)
    if runtime == "apptainer":
        args = ["apptainer", "exec", *(["--nv"] if gpus else [])]
        for bind in binds:
            args += ["--bind", check_bind(bind)]
    else:
        args = ["docker", "run", "--rm", "--init", *(["--gpus", "all"] if gpus else [])]
        if uid_gid is not None:
            args += ["--user", f"{uid_gid[0]}:{uid_gid[1]}"]
        for bind in binds:
            args += ["--volume", check_bind(bind)]
        for name in dict.fromkeys(_PASSED_ENV):
            args += ["--env", name]  # no value: Docker copies the host's, if set
        # The image's entrypoint is `trajhpc`; submitit needs the interpreter instead.
        args += ["--entrypoint", "python3"]
        return shlex.join([*args, image])
    return shlex.join([*args, image, "python3"])


# ---------------------------------------------------------------- image identity (I/O)


def image_digest(runtime: Runtime, image: str | None, declared: str | None, cwd: Path) -> str | None:
    """The digest recorded in provenance: the manifest's, else one computed if cheap, else None.

    Apptainer: sha256 of the image file (up to ``HASH_LIMIT_BYTES``). Docker: the local
    image id from ``docker image inspect``.
    """
    if declared or runtime == "none" or image is None:
        return declared
    if runtime == "apptainer":
        path = cwd / image
        if path.is_file() and path.stat().st_size <= HASH_LIMIT_BYTES:
            with path.open("rb") as f:
                return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        return None
    if shutil.which("docker") is None:
        return None
    try:
        out = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    digest = out.stdout.strip()
    return digest if out.returncode == 0 and _DIGEST.fullmatch(digest) else None


def image_reference(runtime: Runtime, image: str | None, cwd: Path) -> str | None:
    """The image as recorded: an absolute path for an Apptainer file, the reference otherwise."""
    if runtime == "none" or image is None:
        return None
    if runtime == "apptainer" and "://" not in image:
        return str((cwd / image).resolve())
    return image
