"""The host's Slurm client inside an Apptainer job: submitit requeues a timed-out task with
``scontrol requeue`` from inside it, so the image needs the host's ``scontrol``, its
``libslurm``, ``slurm.conf`` and the munge socket, bound read-only at standard places."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping

# Where submitit's `scontrol requeue` finds the binary inside any image.
_STANDARD_BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/bin")


@dataclass(frozen=True)
class SlurmClientPaths:
    """What the host's ``scontrol`` needs, as found on the submit host (None/empty: not found)."""

    scontrol: str | None = None  # the binary file
    libslurm: tuple[str, ...] = ()  # libslurm files ldd resolves for it
    slurm_conf: str | None = None  # the slurm.conf it reads ($SLURM_CONF or /etc/slurm/slurm.conf)
    munge_dir: str | None = None  # the folder holding munge's socket


def slurm_client_binds(paths: SlurmClientPaths) -> tuple[list[str], dict[str, str]]:
    """(binds, env) that let a task call the host's ``scontrol`` inside an Apptainer image.

    submitit requeues a timed-out task with ``scontrol requeue`` from inside the task,
    so the binary, its libslurm, the configuration and munge's socket must be visible
    there, read-only and at the host's paths. A library in a Slurm-specific folder
    (``.../slurm-wlm/libslurmfull.so``) binds that folder, which also holds the plugins;
    one in a general folder (``/usr/lib64/libslurm.so.40``) binds the file only. A binary
    outside the standard ``bin`` folders is also bound to ``/usr/local/bin/scontrol``
    so it is on the image's PATH. Without a binary nothing is bound.
    """
    if not paths.scontrol:
        return [], {}
    binds = [f"{paths.scontrol}:{paths.scontrol}:ro"]
    if os.path.dirname(paths.scontrol) not in _STANDARD_BIN_DIRS:
        binds.append(f"{paths.scontrol}:/usr/local/bin/scontrol:ro")
    for lib in paths.libslurm:
        folder = os.path.dirname(lib)
        target = folder if "slurm" in os.path.basename(folder).lower() else lib
        binds.append(f"{target}:{target}:ro")
    env: dict[str, str] = {}
    if paths.slurm_conf:
        folder = os.path.dirname(paths.slurm_conf)
        binds.append(f"{folder}:{folder}:ro")
        env["SLURM_CONF"] = paths.slurm_conf
    if paths.munge_dir:
        binds.append(paths.munge_dir)  # read-write: clients write to its socket
    return list(dict.fromkeys(binds)), env


def parse_ldd(text: str, name: str = "libslurm") -> list[str]:
    """Resolved paths of the libraries whose name contains ``name`` in ``ldd`` output."""
    found = []
    for line in text.splitlines():
        soname, arrow, rest = line.strip().partition("=>")
        if name not in soname or not arrow:
            continue
        path = rest.strip().split(" (")[0].strip()
        if path.startswith("/"):
            found.append(path)
    return list(dict.fromkeys(found))


def discover_slurm_client(env: Mapping[str, str] | None = None) -> SlurmClientPaths:
    """Find scontrol, its libslurm (``ldd``), slurm.conf and munge's socket folder on this host."""
    env = os.environ if env is None else env
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return SlurmClientPaths()
    libs: list[str] = []
    if shutil.which("ldd") is not None:
        try:
            out = subprocess.run(["ldd", scontrol], capture_output=True, text=True, timeout=30, check=False)
            libs = [p for p in parse_ldd(out.stdout) if os.path.exists(p)]
        except (OSError, subprocess.SubprocessError):
            libs = []
    conf = env.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    munge = next((d for d in ("/run/munge", "/var/run/munge") if os.path.isdir(d)), None)
    return SlurmClientPaths(
        scontrol=scontrol,
        libslurm=tuple(libs),
        slurm_conf=conf if os.path.isfile(conf) else None,
        munge_dir=munge,
    )
