"""Exclusive advisory locks on a file (``flock``), removed again on release.

Why flock and not a lock *file*: the kernel drops a flock when its holder dies
(SIGKILL, node reboot after the NFS lease), so a lock whose holder is gone is free
again without any staleness heuristics; a leftover lock file is just an empty
file that the next holder takes over. The file is unlinked on release so a study
or job directory is left as it was; a waiter that locked the unlinked inode sees
that the path no longer names it and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Iterator

from trajhpc.core.errors import TrajhpcError

_BUSY = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)
# Filesystems mounted without lock support (e.g. Lustre with -o noflock).
_UNSUPPORTED = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
UNLOCKED = -1


def _try_lock(path: Path) -> int | None:
    """An fd holding the lock on ``path``, None while someone else holds it, UNLOCKED where locks don't work."""
    for _ in range(100):
        try:
            fd = _open(path)
        except FileNotFoundError:
            continue  # the folder was removed between mkdir and open (an emptied study folder): again
        except OSError as err:
            raise TrajhpcError(f"cannot create the lock file {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in _BUSY:
                return None
            if err.errno in _UNSUPPORTED:
                # Refusing to run at all there would be worse than running unprotected.
                warnings.warn(f"{path}: this filesystem does not support locks; running without one", stacklevel=3)
                return UNLOCKED
            raise TrajhpcError(f"cannot lock {path}: {err.strerror}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder unlinked on release: lock the new one
    raise TrajhpcError(f"cannot lock {path}: it keeps disappearing")


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # A lock file a colleague's killed job left in a shared study: flock needs no write access.
        return os.open(path, os.O_RDONLY)


def holder(path: Path) -> str:
    """What the holder wrote into the lock file (``pid N on HOST``), or "" if unreadable."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


@contextlib.contextmanager
def exclusive(path: Path, timeout_s: float = 0.0, poll_s: float = 0.1) -> Iterator[bool]:
    """Hold the lock on ``path`` for the ``with`` block; yields False if it stayed busy for ``timeout_s``.

    The holder's pid and host are written into the file, for the message of whoever is refused.
    """
    deadline = time.monotonic() + timeout_s
    fd = _try_lock(path)
    while fd is None and time.monotonic() < deadline:
        time.sleep(poll_s)
        fd = _try_lock(path)
    if fd is None:
        yield False
        return
    if fd == UNLOCKED:
        yield True
        return
    try:
        with contextlib.suppress(OSError):  # opened read-only: the refused side just gets no pid
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield True
    finally:
        # Unlink while still holding it: nobody can lock this path in between.
        with contextlib.suppress(OSError):  # gone already, or a folder we may not write to
            os.unlink(path)
        os.close(fd)
