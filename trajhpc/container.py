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
from typing import BinaryIO, Callable, Iterable, Literal, Mapping, Sequence

from trajhpc.slurmclient import SlurmClientPaths, slurm_client_binds
from trajhpc.submitit_adapter import job_environment_names

Runtime = Literal["apptainer", "docker", "none"]

# An image is a file path, a registry reference (`ghcr.io/x/y:tag@sha256:...`) or an
# Apptainer URI (`docker://...`, `oras://...`): none of them needs spaces, quotes or
# a leading dash (which the runtime would read as an option). In a manifest it may
# also hold `$VAR`/`${VAR}`, which trajhpc expands (never a shell) before use.
_IMAGE_CHAR = r"[A-Za-z0-9._/~+:@=-]"
_VAR = r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"
_IMAGE = re.compile(r"[A-Za-z0-9._/~+][A-Za-z0-9._/~+:@=-]*")
_IMAGE_WITH_VARS = re.compile(rf"(?:[A-Za-z0-9._/~+]|{_VAR})(?:{_IMAGE_CHAR}|{_VAR})*")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BIND_OPTS = {"ro", "rw", "z", "Z"}
# SELinux relabelling: Docker's own bind options, which Apptainer refuses.
DOCKER_ONLY_BIND_OPTS = {"z", "Z"}
# Hashing a multi-GB image on every submit would be slow on network file systems;
# bigger images get a labelled partial digest (size, mtime, first and last bytes).
HASH_LIMIT_BYTES = 4 * 1024**3
PARTIAL_HASH_BYTES = 64 * 1024**2

# What the job process inside `docker run` must see (Docker, unlike Apptainer, passes no
# host environment): submitit's own job-environment variables plus the caches and switches.
_PASSED_ENV = (
    "SUBMITIT_EXECUTOR",
    *job_environment_names(),
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    # Test-only fault injection (trajhpc.job.FAULT_ENV): Apptainer passes it with the
    # rest of the environment; the container CI stage needs it inside Docker too.
    "TRAJHPC_FAULT_INJECT",
)


# ---------------------------------------------------------------- validation (pure)


def _one_line(value: str, what: str) -> None:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} must not contain newlines or control characters")


def check_image(image: str, *, allow_vars: bool = False) -> str:
    """A container image path or reference; raises ValueError for anything unsafe.

    ``allow_vars``: also accept ``$VAR``/``${VAR}`` (a manifest value, expanded later
    by :func:`expand_vars`); the expanded image must pass without it.
    """
    _one_line(image, "image")
    if not (_IMAGE_WITH_VARS if allow_vars else _IMAGE).fullmatch(image):
        raise ValueError(
            f"image {image!r} is not a file path or image reference "
            "(letters, digits and . _ / ~ + : @ = -, not starting with '-')"
        )
    return image


def check_manifest_image(image: str) -> str:
    """:func:`check_image` for a manifest value, where ``$VAR`` may appear."""
    return check_image(image, allow_vars=True)


def expand_vars(value: str) -> str:
    """``~`` and ``$VAR``/``${VAR}`` expanded here (never by a shell); ValueError naming an unset variable."""
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = re.search(_VAR, expanded)
    if unset:
        raise ValueError(f"{value!r}: environment variable {unset.group(0).strip('${}')} not set")
    return expanded


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


# Host folders a manifest may not bind (nor bind over inside the image): they hold the
# system's secrets and devices, or the image's own libraries. trajhpc binds what a job
# needs from them itself (the Slurm client, munge's socket), file by file. (/root is
# left out: it is the home folder of whoever works as root.)
SYSTEM_FOLDERS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr", "/var/run",
)


def system_path(path: str) -> str | None:
    """The system folder ``path`` is (or is inside of), ``/`` for the root; None for anything else."""
    path = os.path.normpath(path)
    if path in ("/", "//"):
        return "/"
    return next((f for f in SYSTEM_FOLDERS if path == f or path.startswith(f + "/")), None)


def _system_problem(path: str, what: str) -> str | None:
    folder = system_path(path) if path.startswith("/") else None
    if folder == "/":
        return f"the {what} is the whole file system (/); bind the folders a job needs"
    if folder is not None:
        return f"the {what} {os.path.normpath(path)} is in the system folder {folder}, which a manifest may not bind"
    return None


def check_manifest_bind(bind: str) -> str:
    """:func:`check_bind` for a manifest value: no ``/`` and no system folder, as source or destination.

    A source with ``~`` or ``$VAR`` is checked again once expanded (:func:`expand_bind`);
    a relative source is not checked (it resolves under the submit folder).
    """
    check_bind(bind)
    parts = bind.split(":")
    problem = _system_problem(parts[0], "source") or (len(parts) > 1 and _system_problem(parts[1], "destination"))
    if problem:
        raise ValueError(f"bind {bind!r}: {problem}")
    return bind


def expand_bind(bind: str) -> str:
    """A manifest bind with ``~``/``$VAR`` expanded in its source, checked again (ValueError naming the bind).

    The expansion must still be one path: no ``:`` (it would split the bind), no
    control character, no leading ``-``, and not in a system folder.
    """
    src, sep, rest = bind.partition(":")
    expanded = expand_vars(src)
    if expanded == src:
        return bind
    if not expanded or expanded.startswith("-") or ":" in expanded or any(ord(c) < 32 or ord(c) == 127 for c in expanded):
        raise ValueError(
            f"bind {bind!r}: the source expands to {expanded!r}, not one path "
            "(empty, a leading '-', a ':' or a control character)"
        )
    problem = _system_problem(expanded, "source")
    if problem:
        raise ValueError(f"bind {bind!r}: {problem}")
    return expanded + sep + rest


def bind_options(bind: str) -> set[str]:
    """The options of a ``src[:dst[:opts]]`` bind (empty without any)."""
    parts = bind.split(":")
    return set(parts[2].split(",")) if len(parts) > 2 else set()


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


def _holds(bind: str, path: str) -> bool:
    """Whether an absolute bind mounts something at ``path``, or the host's ``path`` with a folder above it."""
    parts = bind.split(":")
    src, dst = parts[0], parts[1] if len(parts) > 1 else parts[0]
    return path == dst or (src == dst and path.startswith(dst.rstrip("/") + "/"))


def docker_volume(bind: str) -> str:
    """An absolute bind as Docker's ``--volume`` needs it: always ``src:dst[:opts]``.

    (``--volume /path`` alone would create an anonymous volume at /path, hiding the host's.)
    """
    parts = check_bind(bind).split(":")
    return ":".join([parts[0], parts[1] if len(parts) > 1 else parts[0], *parts[2:]])


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_pair(name: str, value: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise ValueError(f"environment variable name {name!r} is not valid")
    _one_line(value, f"environment variable {name}")
    return f"{name}={value}"


def python_command(
    runtime: Runtime,
    image: str | None,
    binds: Sequence[str],
    *,
    gpus: bool,
    uid_gid: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
    workdir: str | Path | None = None,
) -> str | None:
    """The shell command that replaces ``python`` for a containerised task; None without a container.

    ``binds`` must already be absolute (``unique_binds``). ``env``: variables set inside
    (values fixed at submit time). Docker runs as ``uid_gid`` so the files the job
    writes stay the user's, in ``workdir`` (the submit folder) so relative paths
    resolve as on the host; Apptainer already starts in the current folder. Docker
    also binds ``workdir`` at its own path (as Apptainer binds the current folder),
    unless a bind already holds it or it is a system folder: podman refuses a
    ``--workdir`` that does not exist in the container, and Docker would make an
    empty one.
    """
    if runtime == "none":
        return None
    assert image is not None, "manifest validation guarantees an image"
    check_image(image)
    pairs = [_env_pair(k, v) for k, v in (env or {}).items()]
    if runtime == "apptainer":
        args = ["apptainer", "exec", *(["--nv"] if gpus else [])]
        for bind in binds:
            args += ["--bind", check_bind(bind)]
        for pair in pairs:
            args += ["--env", pair]
        return shlex.join([*args, image, "python3"])
    args = ["docker", "run", "--rm", "--init", *(["--gpus", "all"] if gpus else [])]
    if uid_gid is not None:
        args += ["--user", f"{uid_gid[0]}:{uid_gid[1]}"]
    if workdir is not None:
        workdir = str(workdir)
        _one_line(workdir, "workdir")
        if not workdir.startswith("/"):
            raise ValueError(f"workdir {workdir!r} must be an absolute path")
        args += ["--workdir", workdir]
        if system_path(workdir) is None and not any(_holds(bind, workdir) for bind in binds):
            binds = [*binds, workdir]
    for bind in binds:
        args += ["--volume", docker_volume(bind)]
    named = {pair.split("=", 1)[0] for pair in pairs}
    for name in dict.fromkeys(_PASSED_ENV):
        if name not in named:
            args += ["--env", name]  # no value: Docker copies the host's, if set
    for pair in pairs:
        args += ["--env", pair]
    # The image's entrypoint is `trajhpc`; submitit needs the interpreter instead.
    args += ["--entrypoint", "python3"]
    return shlex.join([*args, image])


# ---------------------------------------------------------------- the task command of a submission


def default_binds(
    run_root: Path, data_root: str | None, model: str, env: Mapping[str, str], home: Path
) -> list[str]:
    """What every containerised job needs to see: the run root, the data, the model caches, a local model."""
    binds = [str(run_root)]
    candidates = [data_root, *cache_dirs(env, home).values(), model]
    # Apptainer and Docker refuse a bind whose source is missing: bind only what exists.
    binds += [str(Path(c).expanduser()) for c in candidates if c and Path(c).expanduser().exists()]
    return binds


def cache_dirs(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """The model caches a job uses: ``TRAJHPC_CACHE`` and ``HF_HOME``, defaults under ``home``."""
    return {
        "TRAJHPC_CACHE": str(Path(env.get("TRAJHPC_CACHE") or home / ".cache" / "trajhpc").expanduser()),
        "HF_HOME": str(Path(env.get("HF_HOME") or home / ".cache" / "huggingface").expanduser()),
    }


def docker_env(env: Mapping[str, str], home: Path) -> dict[str, str]:
    """Variables set inside ``docker run`` (which, unlike Apptainer, passes no host environment):
    HOME and the caches at the host's paths, so ``~`` and the default caches resolve as outside."""
    return {"HOME": str(home), **cache_dirs(env, home)}


def task_python(
    runtime: Runtime,
    image: str | None,
    binds: Sequence[str],
    *,
    slurm: bool,
    gpus: bool,
    cwd: Path,
    env: Mapping[str, str],
    home: Path,
    slurm_client: Callable[[], SlurmClientPaths],
) -> str | None:
    """The command that starts a task's ``python`` inside the container (None without one).

    ``binds``: the defaults and the manifest's, expanded. Docker gets HOME and the caches
    at the host's paths, runs as the submitting user in ``cwd``; Apptainer under Slurm
    gets the host's Slurm client (submitit requeues a timed-out task with ``scontrol``).
    """
    binds = list(binds)
    inner_env: dict[str, str] = {}
    if runtime == "docker":
        inner_env = docker_env(env, home)
    elif runtime == "apptainer" and slurm:
        client_binds, inner_env = slurm_client_binds(slurm_client())
        binds += client_binds
    return python_command(
        runtime,
        image,
        unique_binds(binds, cwd),
        gpus=gpus,
        uid_gid=(os.getuid(), os.getgid()),
        env=inner_env,
        workdir=cwd if runtime == "docker" else None,
    )


# ---------------------------------------------------------------- image identity (I/O)


def partial_digest(f: BinaryIO, size: int, mtime: float) -> str:
    """``partial-sha256:<size>:<mtime>:<sha256 of the first and last PARTIAL_HASH_BYTES>``.

    A cheap identifier for an image too big to hash on every submit: labelled as such,
    so nobody mistakes it for the file's sha256.
    """
    h = hashlib.sha256()
    h.update(f.read(PARTIAL_HASH_BYTES))
    tail = max(PARTIAL_HASH_BYTES, size - PARTIAL_HASH_BYTES)
    if tail < size:
        f.seek(tail)
        h.update(f.read(PARTIAL_HASH_BYTES))
    return f"partial-sha256:{size}:{int(mtime)}:{h.hexdigest()}"


def image_digest(runtime: Runtime, image: str | None, declared: str | None, cwd: Path) -> str | None:
    """The digest recorded in provenance: the manifest's, else one computed if cheap, else None.

    Apptainer: sha256 of the image file up to ``HASH_LIMIT_BYTES``, a labelled
    :func:`partial_digest` above. Docker: the local image id from ``docker image inspect``.
    """
    if declared or runtime == "none" or image is None:
        return declared
    if runtime == "apptainer":
        path = cwd / image
        if not path.is_file():
            return None
        info = path.stat()
        with path.open("rb") as f:
            if info.st_size <= HASH_LIMIT_BYTES:
                return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
            return partial_digest(f, info.st_size, info.st_mtime)
    if shutil.which("docker") is None:
        return None
    try:
        out = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Id}}", image],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return docker_image_id(out.stdout) if out.returncode == 0 else None


def docker_image_id(text: str) -> str | None:
    """``sha256:<hex>`` from ``docker image inspect --format {{.Id}}`` output, else None.

    Docker prints ``sha256:<hex>``; podman (and so podman-docker's ``docker``) the bare hex.
    """
    digest = text.strip()
    if re.fullmatch(r"[0-9a-f]{64}", digest):
        digest = "sha256:" + digest
    return digest if _DIGEST.fullmatch(digest) else None


def image_reference(runtime: Runtime, image: str | None, cwd: Path) -> str | None:
    """The image as recorded: an absolute path for an Apptainer file, the reference otherwise."""
    if runtime == "none" or image is None:
        return None
    if runtime == "apptainer" and "://" not in image:
        return str((cwd / image).resolve())
    return image
