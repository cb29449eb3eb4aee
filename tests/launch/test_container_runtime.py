"""trajhpc.launch.container against what podman (as podman-docker's `docker`) really does.

Found by running the image for real (scripts/container-ci.sh): podman's
`image inspect --format {{.Id}}` prints the bare hex id, and podman refuses a
`--workdir` that does not exist in the container (Docker creates an empty one).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from trajhpc.launch import container as ctr

HEX = "0123456789abcdef" * 4


def _volumes(cmd: str) -> list[str]:
    argv = shlex.split(cmd)
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]


@pytest.mark.parametrize(
    "printed, digest",
    [
        (f"sha256:{HEX}\n", f"sha256:{HEX}"),  # Docker
        (f"{HEX}\n", f"sha256:{HEX}"),  # podman
        ("", None),
        ("Error: no such image\n", None),
        (f"sha256:{HEX[:-1]}\n", None),
        (HEX.upper(), None),
    ],
)
def test_docker_image_id_from_docker_and_podman(printed, digest):
    assert ctr.docker_image_id(printed) == digest


def test_image_digest_through_a_podman_style_docker_command(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    # podman-docker's `docker`: a notice on stderr, the bare id on stdout
    fake.write_text(f"#!/bin/sh\necho 'Emulate Docker CLI using podman.' >&2\necho {HEX}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    assert ctr.image_digest("docker", "localhost/trajhpc:0.1.0-cpu", None, tmp_path) == f"sha256:{HEX}"


def test_image_digest_none_when_docker_fails(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: image not known' >&2\nexit 125\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    assert ctr.image_digest("docker", "nope:1", None, tmp_path) is None


def test_docker_binds_the_workdir_that_no_bind_holds():
    cmd = ctr.python_command("docker", "t:1", ["/runs"], gpus=False, workdir="/home/u/study")
    assert _volumes(cmd) == ["/runs:/runs", "/home/u/study:/home/u/study"]
    assert ("--workdir", "/home/u/study") in set(zip(shlex.split(cmd), shlex.split(cmd)[1:]))


@pytest.mark.parametrize(
    "binds",
    [
        ["/home/u/study"],  # the workdir itself
        ["/home/u"],  # a folder above it, at the same path
        ["/scratch/x:/home/u/study"],  # something else mounted there: the user's choice
    ],
)
def test_docker_does_not_bind_a_workdir_already_held(binds):
    cmd = ctr.python_command("docker", "t:1", binds, gpus=False, workdir="/home/u/study")
    assert _volumes(cmd) == [ctr.docker_volume(b) for b in binds]


def test_docker_binds_the_workdir_over_binds_below_it_or_elsewhere():
    # run root inside the submit folder; a folder above it mounted at another path
    binds = ["/home/u/study/jobs", "/home/u:/data"]
    cmd = ctr.python_command("docker", "t:1", binds, gpus=False, workdir="/home/u/study")
    assert _volumes(cmd) == ["/home/u/study/jobs:/home/u/study/jobs", "/home/u:/data", "/home/u/study:/home/u/study"]


@pytest.mark.parametrize("workdir", ["/", "/usr/src/app", "/etc"])
def test_docker_never_binds_a_system_folder_as_workdir(workdir):
    cmd = ctr.python_command("docker", "t:1", ["/runs"], gpus=False, workdir=workdir)
    assert _volumes(cmd) == ["/runs:/runs"]


def test_apptainer_binds_no_workdir():
    # Apptainer binds the current folder itself
    cmd = ctr.python_command("apptainer", "t.sif", ["/runs"], gpus=False)
    assert shlex.split(cmd) == ["apptainer", "exec", "--bind", "/runs", "--env", "PYTHONSAFEPATH=1", "t.sif", "python3"]


def test_fault_injection_reaches_the_docker_job():
    # Test-only (trajhpc.job.run.FAULT_ENV): the container CI stage slows a job down inside Docker.
    from trajhpc.job.run import FAULT_ENV

    argv = shlex.split(ctr.python_command("docker", "t:1", [], gpus=False))
    assert ("--env", FAULT_ENV) in set(zip(argv, argv[1:]))


def test_the_launch_binds_the_submit_folder(tmp_path, monkeypatch):
    from trajhpc.launch.submit import Launch
    from trajhpc.study.manifest import parse_manifest

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRAJHPC_CACHE", str(tmp_path / "tc"))
    monkeypatch.delenv("HF_HOME", raising=False)
    text = "study: s\nconditions: [A]\ncontainer: {runtime: docker, image: t:1}\n"
    launch = Launch(parse_manifest(text), tmp_path / "m.yaml", Path("/elsewhere/runs"), "local")
    assert f"{tmp_path}:{tmp_path}" in _volumes(launch.python)


# A stand-in for `docker`: `run` starts the "container" (this Python, recording the signals it
# gets) as its own process, as the daemon would, and waits for it; `kill` signals it by name.
FAKE_DOCKER = """#!/usr/bin/env python3
import os, signal, subprocess, sys, time
state = os.environ["FAKE_DOCKER_STATE"]
if sys.argv[1] == "kill":
    sig, name = sys.argv[3], sys.argv[4]
    os.kill(int(open(os.path.join(state, name)).read()), getattr(signal, "SIG" + sig))
    sys.exit(0)
args = sys.argv[2:]
name = args[args.index("--name") + 1]
assert "--sig-proxy=false" in args
time.sleep(float(os.environ.get("FAKE_DOCKER_DELAY", "0")))  # pulling, creating: no container yet
container = subprocess.Popen([sys.executable, "-c", CONTAINER, state], start_new_session=True)
while not os.path.exists(os.path.join(state, "ready")):
    time.sleep(0.01)
open(os.path.join(state, name), "w").write(str(container.pid))  # from now on `kill` finds it
open(os.path.join(state, "argv"), "w").write(repr(args))
sys.exit(container.wait())
"""
CONTAINER = """
import os, signal, sys, time
def stop(signum, frame):
    open(os.path.join(sys.argv[1], "got"), "w").write(signal.Signals(signum).name)
    sys.exit(143)
for name in ("SIGTERM", "SIGINT", "SIGUSR2"):  # USR2: submitit's time-limit warning
    signal.signal(getattr(signal, name), stop)
open(os.path.join(sys.argv[1], "ready"), "w").close()
time.sleep(60)
"""



def _docker_task(tmp_path: Path, state: Path, delay_s: float = 0):
    """The task command of a Docker job, started as srun starts it (its own process group), with the
    stand-in `docker` first on PATH; ``state`` receives what the stand-in records."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state.mkdir()
    fake = bin_dir / "docker"
    fake.write_text(FAKE_DOCKER.replace("CONTAINER, state", f"{CONTAINER!r}, state"))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DOCKER_STATE": str(state),
           "FAKE_DOCKER_DELAY": str(delay_s)}
    argv = [*shlex.split(ctr.python_command("docker", "t:1", [], gpus=False)), "-u", "-m", "submitit.core._submit", "x"]
    return subprocess.Popen(argv, env=env, start_new_session=True)

@pytest.mark.parametrize("signals", [("SIGCONT", "SIGTERM"), ("SIGINT",), ("SIGUSR2",)])
def test_the_docker_task_stops_its_container_when_the_whole_step_is_signalled(tmp_path, monkeypatch, signals):
    """Slurm signals every process of a step at once; the container must still get the signal
    (podman's own proxy lost it, and the container trained on after its task: issue 22, CI)."""
    import os
    import signal
    import time

    state = tmp_path / "state"
    task = _docker_task(tmp_path, state)
    try:
        deadline = time.monotonic() + 30
        while not (state / "ready").exists():
            assert time.monotonic() < deadline and task.poll() is None, "the container never started"
            time.sleep(0.05)
        for name in signals:  # to every process of the task, as slurmstepd does
            os.killpg(task.pid, getattr(signal, name))
        assert task.wait(timeout=10) == 143  # the container's exit status
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
    assert (state / "got").read_text() == signals[-1]
    passed = eval((state / "argv").read_text())  # noqa: S307 - written by the stand-in above
    assert passed[-5:] == ["t:1", "-u", "-m", "submitit.core._submit", "x"] and passed[0] == "--name"


def test_a_signal_that_lands_before_the_container_exists_still_reaches_it(tmp_path):
    """Slurm may stop a task while `docker run` is still creating its container: the shell retries."""
    import os
    import signal
    import time

    state = tmp_path / "state"
    task = _docker_task(tmp_path, state, delay_s=2)
    try:
        time.sleep(0.5)  # the shell has set its traps; the container does not exist yet
        assert not (state / "ready").exists()
        os.killpg(task.pid, signal.SIGTERM)
        assert task.wait(timeout=20) == 143
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
    assert (state / "got").read_text() == "SIGTERM"
