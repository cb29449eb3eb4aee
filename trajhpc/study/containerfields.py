"""The manifest's container values, checked before any shell line is built from them.

An image, a digest or a bind reaches a command line (``apptainer exec``, ``docker run``):
each is refused here unless it is one line, holds no option injection and has the
``src[:dst[:opts]]`` shape; :mod:`trajhpc.launch.container` then ``shlex``-quotes it.
"""

from __future__ import annotations

import os
import re

# An image is a file path, a registry reference (`ghcr.io/x/y:tag@sha256:...`) or an
# Apptainer URI (`docker://...`, `oras://...`): none of them needs spaces, quotes or
# a leading dash (which the runtime would read as an option). In a manifest it may
# also hold `$VAR`/`${VAR}`, which trajhpc expands (never a shell) before use.
_IMAGE_CHAR = r"[A-Za-z0-9._/~+:@=-]"
_VAR = r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"
_IMAGE = re.compile(r"[A-Za-z0-9._/~+][A-Za-z0-9._/~+:@=-]*")
_IMAGE_WITH_VARS = re.compile(rf"(?:[A-Za-z0-9._/~+]|{_VAR})(?:{_IMAGE_CHAR}|{_VAR})*")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BIND_OPTS = {"ro", "rw", "z", "Z"}
# SELinux relabelling: Docker's own bind options, which Apptainer refuses.
DOCKER_ONLY_BIND_OPTS = {"z", "Z"}


def one_line(value: str, what: str) -> None:
    """ValueError unless ``value`` is non-empty and holds no newline or control character."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} must not contain newlines or control characters")


def check_image(image: str, *, allow_vars: bool = False) -> str:
    """A container image path or reference; raises ValueError for anything unsafe.

    ``allow_vars``: also accept ``$VAR``/``${VAR}`` (a manifest value, expanded later
    by :func:`expand_vars`); the expanded image must pass without it.
    """
    one_line(image, "image")
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
    if not DIGEST.fullmatch(digest):
        raise ValueError(f"digest {digest!r} must look like sha256:<64 hex digits>")
    return digest


def check_bind(bind: str) -> str:
    """``src[:dst[:opts]]``: src absolute or relative, dst absolute, opts from ro/rw/z/Z."""
    one_line(bind, "bind")
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
