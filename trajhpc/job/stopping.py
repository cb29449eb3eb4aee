"""How a job process stops when it is told to: Ctrl-C, its scheduler's SIGTERM, or its time running out.

Every way ends the same: the exception unwinds the job, which leaves ``state.json`` at
"interrupted" and releases the job directory's lock, so that a later attempt resumes it.

Why SIGTERM matters. submitit ignores SIGTERM in the task (it waits for its own USR2), and
Slurm then SIGKILLs the step after ``KillWait``. A bare process dies with it; a Docker or
podman container does not: the SIGKILL reaches only the client (``docker run``), and the
container, started by the container daemon outside the job's process tree, trains on with
the job's lock held, so the resubmitted attempt is refused. trajhpc's Docker task command
(:data:`trajhpc.launch.container.DOCKER_RUN`) sends the signal to the container, where this
handler ends the job within the grace time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from typing import Iterator, Mapping


class Stopped(KeyboardInterrupt):
    """The job was told to stop (SIGTERM, or out of time with no way to requeue): unwinds as from Ctrl-C."""

    exit_code = 143  # as a process killed by SIGTERM


@contextlib.contextmanager
def noting_sigint(seen: list[int]) -> Iterator[None]:
    """Note in ``seen`` that SIGINT arrived, then handle it as before (KeyboardInterrupt).

    A library may turn the KeyboardInterrupt into another error (one landing mid-import does):
    ``seen`` still tells the caller it was an interruption.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Stopped` (a second one is ignored, so that the
    clean-up is not cut short); the previous handler (submitit's) is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Stopped("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def requeue_blocked(env: Mapping[str, str] = os.environ) -> str | None:
    """Why submitit cannot requeue this task when its time runs out, or None if it can.

    submitit requeues a Slurm task with ``scontrol``, run from inside the task: a container
    without the Slurm client (the Docker image) cannot. ``trajhpc submit`` resubmits such a job.
    """
    if env.get("SUBMITIT_EXECUTOR") != "slurm":
        return None  # the local executor requeues by itself
    if shutil.which("scontrol", path=env.get("PATH")) is None:
        return "no Slurm client (scontrol) in this task's environment to requeue it with"
    return None
