"""Running each job inside the project's container image (Apptainer on clusters, Docker on workstations).

submitit starts a task as ``<python> -u -m submitit.core._submit <folder>``; putting the
container in front of the interpreter (``apptainer exec ... IMAGE python3``) is all it
takes, so the scheduler, the pickles and the requeue logic stay submitit's.

Every value from a manifest that reaches a shell line is validated by
:mod:`trajhpc.study.containerfields` (no newlines, no option injection, ``src[:dst[:opts]]``
binds only) and then ``shlex``-quoted here.
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

from trajhpc.core.errors import TrajhpcError
from trajhpc.launch.slurmclient import SlurmClientPaths, slurm_client_binds
from trajhpc.launch.submitit_adapter import job_environment_names
from trajhpc.study.containerfields import DIGEST, check_bind, check_image, one_line, system_path

Runtime = Literal["apptainer", "docker", "none"]

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
    # Test-only fault injection (trajhpc.job.run.FAULT_ENV): Apptainer passes it with the
    # rest of the environment; the container CI stage needs it inside Docker too.
    "TRAJHPC_FAULT_INJECT",
)

# Set in every container. The task's folder (bound, and the current folder) must not shadow the
# image's packages: `python3 -m` puts it first on sys.path, so a task submitted from a trajhpc
# checkout ran the checkout's code while its provenance named the image (Python >= 3.11).
IMAGE_ENV = {"PYTHONSAFEPATH": "1"}


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
    one_line(value, f"environment variable {name}")
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
    if image is None:  # the manifest refuses this already (container.image)
        raise TrajhpcError(f"container runtime {runtime} needs an image")
    check_image(image)
    pairs = [_env_pair(k, v) for k, v in {**IMAGE_ENV, **(env or {})}.items()]
    if runtime == "apptainer":
        args = ["apptainer", "exec", *(["--nv"] if gpus else [])]
        for bind in binds:
            args += ["--bind", check_bind(bind)]
        for pair in pairs:
            args += ["--env", pair]
        return shlex.join([*args, image, "python3"])
    args = ["--rm", "--init", *(["--gpus", "all"] if gpus else [])]
    if uid_gid is not None:
        args += ["--user", f"{uid_gid[0]}:{uid_gid[1]}"]
    if workdir is not None:
        workdir = str(workdir)
        one_line(workdir, "workdir")
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
    return shlex.join(["sh", "-c", DOCKER_RUN, "trajhpc-docker", *args, image])


# `docker run "$@"` (options, image, then submitit's arguments), with the container stopped when
# its task is. Slurm ends a step by signalling every process of it at once (SIGCONT, SIGTERM,
# then SIGKILL after KillWait). The client's own signal proxy loses that SIGTERM (its `runc kill`
# helper is hit by the same storm), and the SIGKILL reaches only the client: the container,
# started outside the step's processes, trained on with the job's lock held, and the next
# attempt was refused. So the container gets a name, the client ignores the storm, and this
# shell sends the container the signal itself, from a `docker kill` started after the storm;
# the job stops on it (trajhpc.job.stopping) and the client relays its last words.
# Forwarded: Slurm's stop (TERM), Ctrl-C (INT) and the time-limit warning submitit asks for (USR2;
# USR1 and HUP for clusters that use those).
_FORWARDED = ("TERM", "INT", "USR1", "USR2", "HUP")
# A signal that lands while the container is still being created finds nothing to kill yet:
# `fwd` retries for up to 10 s while the client runs.
DOCKER_RUN = (
    'name=trajhpc-$(od -An -N6 -tx1 /dev/urandom | tr -d " \\n"); child=; '
    'fwd() { i=0; until docker kill --signal "$1" "$name" >/dev/null 2>&1; do i=$((i + 1)); '
    '[ "$i" -le 10 ] && [ -n "$child" ] && kill -0 "$child" 2>/dev/null || break; sleep 1; done; }; '
    + "".join(f"trap 'fwd {sig}' {sig}; " for sig in _FORWARDED)
    + f'(trap "" {" ".join(_FORWARDED)}; exec docker run --name "$name" --sig-proxy=false "$@") & child=$!; '
    'while :; do wait "$child"; rc=$?; kill -0 "$child" 2>/dev/null || exit "$rc"; done'
)


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
    return digest if DIGEST.fullmatch(digest) else None


def image_reference(runtime: Runtime, image: str | None, cwd: Path) -> str | None:
    """The image as recorded: an absolute path for an Apptainer file, the reference otherwise."""
    if runtime == "none" or image is None:
        return None
    if runtime == "apptainer" and "://" not in image:
        return str((cwd / image).resolve())
    return image
