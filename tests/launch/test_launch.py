"""Submission: the sbatch script (golden), executors, containers, resubmission, and a local end-to-end run.

Slurm itself is faked here (``sbatch``/``srun``/``sacct`` scripts on PATH) so the real
submitit code path runs without a cluster; tests/launch/test_slurm_integration.py uses a real one.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO
from rich.console import Console

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.launch import container as ctr
from trajhpc.launch import slurmclient
from trajhpc.launch.localrun import local_slots
from trajhpc.launch.submit import (
    Launch,
    make_slurm_executor,
    render_sbatch,
    resolve_executor,
    slurm_parameters,
    submit_command,
)
from trajhpc.study import containerfields as fields
from trajhpc.study.grid import expand
from trajhpc.study.manifest import Resources, load_manifest, parse_manifest

FOLDER = Path("/runs/llama31-8b-lv3/.submitit/20260101T000000-abcdef")
APPTAINER = ctr.python_command("apptainer", "/images/trajhpc.sif", ["/runs", "/data:/data:ro"], gpus=True)


# ---------------------------------------------------------------- sbatch script


def test_sbatch_array_golden(golden):
    manifest = load_manifest(REPO / "manifests" / "grid.yaml")
    n_jobs = len(expand(manifest, Path("jobs")))  # the array holds the whole grid
    golden("sbatch_grid_array.sh", render_sbatch(manifest, folder=FOLDER, python=APPTAINER, n_jobs=n_jobs))


def test_sbatch_single_job_golden(golden):
    manifest = parse_manifest(
        "study: one\nconditions: [A]\nresources:\n  partition: gpu\n  account: proj-1\n  qos: high\n"
        "  constraint: a100|h100\n  mem_gb: 1.5\n  extra_sbatch: {mail-type: FAIL, exclusive: true}\n"
    )
    golden("sbatch_single.sh", render_sbatch(manifest, folder=Path("/r/.submitit/x"), python="/usr/bin/python3", n_jobs=1))


def test_sbatch_is_what_the_executor_submits(monkeypatch):
    """render_sbatch == the script submitit's SlurmExecutor builds for the same array (no cluster needed)."""
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    manifest = load_manifest(REPO / "manifests" / "grid.yaml")
    launch = Launch(manifest, REPO / "manifests" / "grid.yaml", Path("/runs"), "slurm")
    executor = make_slurm_executor(launch)
    assert executor.max_num_timeout == manifest.resources.max_requeues
    array = submitit.SlurmExecutor(executor.folder, executor.max_num_timeout)  # as submitit does for arrays
    array.update_parameters(**executor.parameters)
    array.parameters["map_count"] = 7
    expected = array._make_submission_file_text(executor._submitit_command_str, "uid")
    assert launch.sbatch(7) == expected


def test_slurm_parameters_from_resources():
    manifest = parse_manifest(
        "study: s\nconditions: [A]\nresources: {gpus_per_node: 2, cpus_per_task: 4, mem_gb: 12, timeout_min: 30,"
        " array_parallelism: 5, signal_delay_s: 60, partition: p, extra_sbatch: {nice: 10}}\n"
    )
    assert slurm_parameters(manifest) == {
        "job_name": "trajhpc-s", "time": 30, "mem": "12GB", "cpus_per_task": 4, "gpus_per_node": 2,
        "array_parallelism": 5, "signal_delay_s": 60, "partition": "p", "additional_parameters": {"nice": 10},
        "setup": ["export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"],
    }


@pytest.mark.parametrize(
    "choice, sbatch, expected", [("auto", True, "slurm"), ("auto", False, "local"), ("slurm", False, "slurm"), ("local", True, "local")]
)
def test_resolve_executor(choice, sbatch, expected):
    assert resolve_executor(choice, sbatch) == expected


def test_resolve_executor_rejects_unknown():
    with pytest.raises(TrajhpcError, match="--executor must be one of slurm, local, auto, got 'pbs'"):
        resolve_executor("pbs", True)


# ---------------------------------------------------------------- containers


def test_apptainer_command():
    assert APPTAINER == "apptainer exec --nv --bind /runs --bind /data:/data:ro --env PYTHONSAFEPATH=1 /images/trajhpc.sif python3"
    assert ctr.python_command("apptainer", "x.sif", [], gpus=False) == "apptainer exec --env PYTHONSAFEPATH=1 x.sif python3"
    assert ctr.python_command("none", None, ["/x"], gpus=True) is None
    cmd = ctr.python_command("apptainer", "x.sif", ["/a"], gpus=False, env={"SLURM_CONF": "/etc/slurm/slurm.conf"})
    assert cmd == "apptainer exec --bind /a --env PYTHONSAFEPATH=1 --env SLURM_CONF=/etc/slurm/slurm.conf x.sif python3"


DEBIAN = "/usr/lib/x86_64-linux-gnu/slurm-wlm/libslurmfull.so"
CLIENT_BINDS = [
    # (discovered paths) -> (binds, env)
    (slurmclient.SlurmClientPaths(), ([], {})),
    (slurmclient.SlurmClientPaths(libslurm=(DEBIAN,), munge_dir="/run/munge"), ([], {})),  # no scontrol: nothing
    (
        slurmclient.SlurmClientPaths("/usr/bin/scontrol", (DEBIAN,), "/etc/slurm/slurm.conf", "/run/munge"),
        (
            ["/usr/bin/scontrol:/usr/bin/scontrol:ro", "/usr/lib/x86_64-linux-gnu/slurm-wlm:/usr/lib/x86_64-linux-gnu/slurm-wlm:ro",
             "/etc/slurm:/etc/slurm:ro", "/run/munge"],
            {"SLURM_CONF": "/etc/slurm/slurm.conf"},
        ),
    ),
    (
        # a library in a general folder: the file only; a binary off the image's PATH: also in /usr/local/bin
        slurmclient.SlurmClientPaths("/opt/slurm/bin/scontrol", ("/usr/lib64/libslurm.so.40",), "/opt/slurm/etc/slurm.conf",
                             "/var/run/munge"),
        (
            ["/opt/slurm/bin/scontrol:/opt/slurm/bin/scontrol:ro", "/opt/slurm/bin/scontrol:/usr/local/bin/scontrol:ro",
             "/usr/lib64/libslurm.so.40:/usr/lib64/libslurm.so.40:ro", "/opt/slurm/etc:/opt/slurm/etc:ro",
             "/var/run/munge"],
            {"SLURM_CONF": "/opt/slurm/etc/slurm.conf"},
        ),
    ),
    (slurmclient.SlurmClientPaths("/usr/local/bin/scontrol"), (["/usr/local/bin/scontrol:/usr/local/bin/scontrol:ro"], {})),
]


@pytest.mark.parametrize("paths, expected", CLIENT_BINDS)
def test_slurm_client_binds(paths, expected):
    assert slurmclient.slurm_client_binds(paths) == expected
    for bind in expected[0]:
        fields.check_bind(bind)


def test_parse_ldd():
    text = (
        "\tlinux-vdso.so.1 (0x00007ffd)\n"
        f"\tlibslurmfull.so => {DEBIAN} (0x00007f6a8f36b000)\n"
        "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6a8f000000)\n"
        "\tlibslurm.so.40 => not found\n"
    )
    assert slurmclient.parse_ldd(text) == [DEBIAN]


def test_apptainer_on_slurm_binds_the_slurm_client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = slurmclient.SlurmClientPaths("/usr/bin/scontrol", (DEBIAN,), "/etc/slurm/slurm.conf", "/run/munge")
    monkeypatch.setattr("trajhpc.launch.submit.discover_slurm_client", lambda: paths)
    text = "study: s\nconditions: [A]\ncontainer: {runtime: apptainer, image: t.sif}\n"
    slurm = Launch(parse_manifest(text), tmp_path / "m.yaml", Path("runs"), "slurm").python
    for bind in slurmclient.slurm_client_binds(paths)[0]:
        assert f"--bind {bind}" in slurm
    assert "--env SLURM_CONF=/etc/slurm/slurm.conf" in slurm
    local = Launch(parse_manifest(text), tmp_path / "m.yaml", Path("runs"), "local").python
    assert "scontrol" not in local and "SLURM_CONF" not in local


def test_discover_slurm_client_on_this_host():
    found = slurmclient.discover_slurm_client()
    assert (found.scontrol is None) == (shutil.which("scontrol") is None)
    assert all(os.path.isabs(p) and "libslurm" in os.path.basename(p) for p in found.libslurm)


def test_docker_command_exact_arguments():
    env = {"HOME": "/home/u", "TRAJHPC_CACHE": "/home/u/.cache/trajhpc", "HF_HOME": "/scratch/hf"}
    cmd = ctr.python_command(
        "docker", "ghcr.io/o/trajhpc:1.0", ["/runs", "/data:/d:ro"], gpus=True, uid_gid=(1000, 100),
        env=env, workdir="/work/study",
    )
    passed = [a for name in dict.fromkeys(ctr._PASSED_ENV) for a in ("--env", name)]
    assert shlex.split(cmd) == [
        # `docker run "$@"`, the container stopped with its task (test_container_runtime.py)
        "sh", "-c", ctr.DOCKER_RUN, "trajhpc-docker",
        "--rm", "--init", "--gpus", "all", "--user", "1000:100", "--workdir", "/work/study",
        # a lone path would make Docker create an anonymous volume there: always src:dst
        "--volume", "/runs:/runs", "--volume", "/data:/d:ro",
        "--volume", "/work/study:/work/study",  # the workdir, bound like Apptainer's current folder
        *passed,
        # the submit folder (bound, the current folder) must not shadow the image's packages
        "--env", "PYTHONSAFEPATH=1",
        "--env", "HOME=/home/u", "--env", "TRAJHPC_CACHE=/home/u/.cache/trajhpc", "--env", "HF_HOME=/scratch/hf",
        # the image's entrypoint is `trajhpc`, so the interpreter must replace it
        "--entrypoint", "python3", "ghcr.io/o/trajhpc:1.0",
    ]
    # what submitit's job side reads to find its folder, id and rank
    assert {"SUBMITIT_EXECUTOR", "SUBMITIT_LOCAL_JOB_ID", "SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID"} <= set(passed)


def test_docker_launch_binds_run_root_and_sets_home_caches_and_workdir(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("TRAJHPC_CACHE", str(tmp_path / "tc"))
    text = "study: s\nconditions: [A]\ncontainer: {runtime: docker, image: t:1}\n"
    launch = Launch(parse_manifest(text), tmp_path / "m.yaml", Path("runs"), "local")
    argv = shlex.split(launch.python)
    pairs = {(a, b) for a, b in zip(argv, argv[1:])}
    hf = str(home / ".cache" / "huggingface")
    assert ("--volume", f"{tmp_path}/runs:{tmp_path}/runs") in pairs and ("--volume", f"{hf}:{hf}") in pairs
    assert ("--workdir", str(tmp_path)) in pairs
    assert {("--env", f"HOME={home}"), ("--env", f"HF_HOME={hf}"), ("--env", f"TRAJHPC_CACHE={tmp_path}/tc")} <= pairs
    assert all(":" in argv[i + 1] for i, a in enumerate(argv) if a == "--volume")  # never a lone path


def test_paths_with_spaces_and_quotes_are_quoted():
    cmd = ctr.python_command("apptainer", "/img/t.sif", ["/data/my files", "/x/it's"], gpus=False)
    assert shlex.split(cmd) == [
        "apptainer", "exec", "--bind", "/data/my files", "--bind", "/x/it's", "--env", "PYTHONSAFEPATH=1", "/img/t.sif", "python3"
    ]


@pytest.mark.parametrize(
    "bind, message",
    [
        ("/a\n--bind /etc", "must not contain newlines"),
        ("/a:/b:ro:x", "more than src:dst:opts"),
        ("/a:rel", "destination must be an absolute path"),
        ("/a:/b:rx", "options must be a comma list"),
        ("--privileged", "does not start with '-'"),
        (":/b", "needs a source path"),
        ("", "must not be empty"),
    ],
)
def test_bind_validation(bind, message):
    with pytest.raises(ValueError, match=message):
        fields.check_bind(bind)


@pytest.mark.parametrize("bind", ["/data", "data", "./d:/d", "/a:/b:ro", "/a:/b:rw,z", "~/.cache"])
def test_valid_binds(bind):
    assert fields.check_bind(bind) == bind


@pytest.mark.parametrize("image", ["-it", "img;rm -rf /", "a b", "img\n", "$(id)", ""])
def test_image_validation(image):
    with pytest.raises(ValueError):
        fields.check_image(image)


@pytest.mark.parametrize("image", ["trajhpc.sif", "/p/t.sif", "docker://ghcr.io/o/t:1", "o/t@sha256:" + "a" * 64])
def test_valid_images(image):
    assert fields.check_image(image) == image


def test_unique_binds_absolute_and_deduplicated(tmp_path):
    binds = ctr.unique_binds(["data", str(tmp_path / "data"), "/x:/y:ro", "/z:/y"], tmp_path)
    assert binds == [str(tmp_path / "data"), "/x:/y:ro"]


def test_default_binds_only_existing(tmp_path):
    (tmp_path / "hf").mkdir()
    m = parse_manifest(f"study: s\nconditions: [A]\nmodel: {tmp_path}\n")
    env = {"HF_HOME": str(tmp_path / "hf"), "TRAJHPC_CACHE": str(tmp_path / "missing")}
    assert ctr.default_binds(tmp_path / "runs", m.data.root, m.model, env, tmp_path / "home") == [
        str(tmp_path / "runs"), str(tmp_path / "hf"), str(tmp_path)
    ]


def test_manifest_bind_env_expansion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    monkeypatch.delenv("NOPE", raising=False)
    text = "study: s\nconditions: [A]\ncontainer:\n  runtime: apptainer\n  image: t.sif\n  binds:\n    - $SCRATCH/hf:/hf:ro\n"
    launch = Launch(parse_manifest(text, "m.yaml"), tmp_path / "m.yaml", Path("runs"), "slurm")
    assert "--bind /scratch/me/hf:/hf:ro" in launch.python
    assert launch.python.endswith(f"{tmp_path}/t.sif python3")  # the image path is made absolute
    with pytest.raises(InputError, match=r"m\.yaml:7: container\.binds\.0: '\$NOPE/x': environment variable NOPE not set"):
        Launch(parse_manifest(text.replace("$SCRATCH/hf:/hf:ro", "$NOPE/x"), "m.yaml"), tmp_path / "m.yaml", Path("runs"), "slurm")


def test_manifest_image_env_and_home_expansion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGES", "/images/x")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NOPE", raising=False)
    text = "study: s\nconditions: [A]\ncontainer:\n  runtime: apptainer\n  image: ${IMAGES}/t.sif\n"
    launch = Launch(parse_manifest(text, "m.yaml"), tmp_path / "m.yaml", Path("runs"), "local")
    assert launch.image == "/images/x/t.sif" and launch.python.endswith(" /images/x/t.sif python3")
    launch = Launch(parse_manifest(text.replace("${IMAGES}", "~/img"), "m.yaml"), tmp_path / "m.yaml", Path("runs"), "local")
    assert launch.image == f"{tmp_path}/home/img/t.sif"
    with pytest.raises(InputError, match=r"m\.yaml:5: container\.image: .*environment variable NOPE not set"):
        Launch(parse_manifest(text.replace("${IMAGES}", "$NOPE"), "m.yaml"), tmp_path / "m.yaml", Path("runs"), "local")
    for bad in ("$(id)/t.sif", "${A/t.sif", "a;$B"):
        with pytest.raises(ValueError):
            fields.check_manifest_image(bad)


def test_image_digest(tmp_path):
    image = tmp_path / "t.sif"
    image.write_bytes(b"image bytes")
    assert ctr.image_digest("apptainer", "t.sif", None, tmp_path) == "sha256:" + hashlib.sha256(b"image bytes").hexdigest()
    declared = "sha256:" + "0" * 64
    assert ctr.image_digest("apptainer", "t.sif", declared, tmp_path) == declared
    assert ctr.image_digest("apptainer", "missing.sif", None, tmp_path) is None
    assert ctr.image_digest("none", None, None, tmp_path) is None


def test_image_digest_above_the_limit_is_a_labelled_partial_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(ctr, "HASH_LIMIT_BYTES", 10)
    monkeypatch.setattr(ctr, "PARTIAL_HASH_BYTES", 4)
    image = tmp_path / "big.sif"
    image.write_bytes(b"HEAD-middle-bytes-TAIL")
    os.utime(image, (1_700_000_000, 1_700_000_000))
    expected = hashlib.sha256(b"HEAD" + b"TAIL").hexdigest()
    assert ctr.image_digest("apptainer", "big.sif", None, tmp_path) == f"partial-sha256:22:1700000000:{expected}"
    image.write_bytes(b"HEAD-middle-BYTES-TAIL")  # same size, mtime, ends: same identifier (it is partial)
    os.utime(image, (1_700_000_000, 1_700_000_000))
    assert ctr.image_digest("apptainer", "big.sif", None, tmp_path) == f"partial-sha256:22:1700000000:{expected}"
    image.write_bytes(b"HEAD-mid-TAIL!")  # another size or ending: another identifier
    assert ctr.image_digest("apptainer", "big.sif", None, tmp_path).startswith("partial-sha256:14:")


# ---------------------------------------------------------------- local slots


@pytest.mark.parametrize(
    "resources, cpus, gpus, expected",
    [
        ({}, 2, [], [(), ()]),
        ({"cpus_per_task": 4}, 2, [], [()]),
        ({"array_parallelism": 3}, 16, [], [(), (), ()]),
        ({"gpus_per_node": 1}, 8, [0, 1, 2], [(0,), (1,), (2,)]),
        ({"gpus_per_node": 2}, 8, [4, 5, 6], [(4, 5)]),
        ({"gpus_per_node": 1, "array_parallelism": 1}, 8, [0, 1], [(0,)]),
    ],
)
def test_local_slots(resources, cpus, gpus, expected):
    assert local_slots(Resources(**resources), cpus, gpus) == expected


def test_local_slots_fit_in_memory():
    assert local_slots(Resources(mem_gb=8), 16, [], memory_gb=30) == [(), (), ()]
    assert local_slots(Resources(mem_gb=64), 16, [], memory_gb=30) == [()]  # at least one
    assert local_slots(Resources(mem_gb=8, gpus_per_node=1), 16, [0, 1, 2], memory_gb=20) == [(0,), (1,)]


def test_local_slots_without_enough_gpus():
    with pytest.raises(TrajhpcError, match="asks for 2 GPU"):
        local_slots(Resources(gpus_per_node=2), 8, [0])


# ---------------------------------------------------------------- submission through a fake Slurm


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/srun/sacct/squeue scripts: sbatch keeps each script and answers with job ids 100, 101, ..."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "states").write_text("JobID|State|NodeList\n")
    scripts = {
        "sbatch": f'n=$(ls {bin_dir}/sbatch-*.sh 2>/dev/null | wc -l); cp "$1" {bin_dir}/sbatch-$n.sh; '
        'echo "Submitted batch job $((100 + n))"',
        "srun": "exit 0",
        "sacct": f"cat {bin_dir}/states",
        "squeue": "exit 0",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return bin_dir


MANIFEST = "study: st\nconditions: [A, B]\nseeds: [0, 1]\norders: [[care-appointments]]\nexecutor: auto\n"


def _submit(path: Path, **kw) -> str:
    out = io.StringIO()
    args = {"dry_run": False, "run_root": None, "executor": None, "wait": False} | kw
    submit_command(Console(file=out, width=200, color_system=None), path, **args)
    return out.getvalue()


def _records(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("jobs/st/*/submission.json"))}


def test_dry_run_prints_grid_and_script_and_submits_nothing(fake_slurm, tmp_path):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    text = _submit(Path("m.yaml"), dry_run=True)
    jobs = expand(load_manifest(tmp_path / "m.yaml"))
    assert all(job.job_id in text for job in jobs)
    assert "4 jobs: 4 to submit, 0 done (skipped), 0 queued or running (left alone)" in text
    folder = text.split("sbatch script for 4 jobs (")[1].split("):")[0]
    assert folder.startswith(str(tmp_path / "jobs" / "st" / ".submitit") + "/")
    script = text.split("):\n", 1)[1]
    manifest = load_manifest(tmp_path / "m.yaml")
    python = shlex.quote(os.sys.executable)
    assert script.rstrip("\n") == render_sbatch(manifest, folder=Path(folder), python=python, n_jobs=4).rstrip("\n")
    assert not (tmp_path / "jobs").exists() and not list(fake_slurm.glob("sbatch-*"))


def test_submit_then_resubmit_only_what_needs_it(fake_slurm, tmp_path):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    text = _submit(Path("m.yaml"))
    assert "submitted 4 jobs as Slurm array 100" in text
    records = _records(tmp_path)
    ids = {job_id: r["slurm_job_id"] for job_id, r in records.items()}
    assert sorted(ids.values()) == ["100_0", "100_1", "100_2", "100_3"]
    # the script sbatch received is the rendered one
    script = (fake_slurm / "sbatch-0.sh").read_text()
    assert "#SBATCH --array=0-3%4" in script and "trajhpc-st" in script
    for job_id, record in records.items():
        assert record["executor"] == "slurm" and record["previous"] == []
        assert record["user"] == getpass.getuser()  # the submitter: a shared study has several
        assert json.loads((tmp_path / "jobs" / "st" / job_id / "spec.json").read_text())["schema"] == "trajhpc.spec/1"

    # Slurm now says: one completed (metrics complete), one running, one failed, one cancelled.
    by_state = dict(zip(["COMPLETED", "RUNNING", "FAILED", "CANCELLED by 0"], sorted(ids, key=ids.get)))
    (fake_slurm / "states").write_text(
        "JobID|State|NodeList\n" + "".join(f"{ids[j]}|{s}|vm\n" for s, j in by_state.items())
    )
    (tmp_path / "jobs" / "st" / by_state["COMPLETED"] / "metrics.json").write_text('{"complete": true}')
    text = _submit(Path("m.yaml"))
    assert "4 jobs: 2 to submit, 1 done (skipped), 1 queued or running (left alone)" in text
    assert "submitted 2 jobs as Slurm array 101" in text
    assert "#SBATCH --array=0-1%2" in (fake_slurm / "sbatch-1.sh").read_text()
    records = _records(tmp_path)
    assert records[by_state["RUNNING"]]["slurm_job_id"] == ids[by_state["RUNNING"]]  # left alone
    for state in ("FAILED", "CANCELLED by 0"):
        record = records[by_state[state]]
        assert record["slurm_job_id"].startswith("101_")
        assert record["previous"][0]["slurm_job_id"] == ids[by_state[state]]

    # A changed manifest (one more seed) only adds its new jobs.
    (fake_slurm / "states").write_text(
        "JobID|State|NodeList\n" + "".join(f"{r['slurm_job_id']}|RUNNING|vm\n" for r in records.values())
    )
    (tmp_path / "m.yaml").write_text(MANIFEST.replace("[0, 1]", "[0, 1, 2]"))
    text = _submit(Path("m.yaml"))
    assert "6 jobs: 2 to submit, 1 done (skipped), 3 queued or running (left alone)" in text
    assert "submitted 2 jobs as Slurm array 102" in text


def test_submit_records_the_manifest_analysis_and_its_hash(fake_slurm, tmp_path):
    (tmp_path / "m.yaml").write_text(MANIFEST + "analysis: {secondary: [{metric: name}]}\n")
    _submit(Path("m.yaml"))
    analysis = load_manifest(tmp_path / "m.yaml").analysis.document()
    assert analysis == {"primary": {"arm": "B", "baseline": "A", "metric": "exact"},  # defaults filled
                        "secondary": [{"arm": "B", "baseline": "A", "metric": "name", "test": "sign-flip"}]}
    canonical = json.dumps(analysis, sort_keys=True, separators=(",", ":")).encode()
    records = _records(tmp_path)
    assert len(records) == 4
    for record in records.values():
        assert record["analysis"] == analysis
        assert record["analysis_sha256"] == hashlib.sha256(canonical).hexdigest()
    # The analysis is in no job's spec: another one names the same jobs.
    (tmp_path / "m.yaml").write_text(MANIFEST + "analysis: {secondary: [{metric: exact_at_budget_total}]}\n")
    assert sorted(job.job_id for job in expand(load_manifest(tmp_path / "m.yaml"))) == sorted(records)


def test_submit_with_overrides_records_them_and_the_effective_manifest(fake_slurm, tmp_path):
    """issue 23: --set changes the grid and ids like an edited file would, and the record says so."""
    (tmp_path / "m.yaml").write_text(MANIFEST)
    overrides = ["seeds=[5]", "train.lr=1.0e-4"]
    dry = _submit(Path("m.yaml"), dry_run=True, overrides=overrides)
    assert "2 jobs: 2 to submit" in dry and "overrides: --set 'seeds=[5]' --set train.lr=1.0e-4" in dry
    _submit(Path("m.yaml"), overrides=overrides)
    edited = MANIFEST.replace("seeds: [0, 1]", "seeds: [5]") + "train: {lr: 1.0e-4}\n"
    (tmp_path / "e.yaml").write_text(edited)
    records = _records(tmp_path)
    assert sorted(records) == sorted(job.job_id for job in expand(load_manifest(tmp_path / "e.yaml")))
    for record in records.values():
        assert record["overrides"] == overrides
        assert record["effective_manifest"]["seeds"] == [5] and record["effective_manifest"]["train"] == {"lr": 1e-4}
        assert record["manifest"] == str(tmp_path / "m.yaml")
    # Without --set, the record says none were given.
    (tmp_path / "m.yaml").write_text(MANIFEST.replace("[0, 1]", "[7]"))
    _submit(Path("m.yaml"))
    plain = [r for r in _records(tmp_path).values() if r["overrides"] == []]
    assert len(plain) == 2 and plain[0]["effective_manifest"]["seeds"] == [7]


def test_sbatch_failure_is_one_clear_error(fake_slurm, tmp_path):
    (fake_slurm / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    (tmp_path / "m.yaml").write_text(MANIFEST)
    with pytest.raises(TrajhpcError, match="sbatch failed: .*invalid partition specified: gpu"):
        _submit(Path("m.yaml"))


# ---------------------------------------------------------------- local executor, end to end (real jobs)

LOCAL = """study: st
model: tiny
data: {max_train_per_block: 6, max_heldout_per_block: 2}
conditions: [A, B]
orders: [[care-appointments]]
train: {max_steps: 1, batch_size: 2, max_seq_len: 512}
eval: {batch_size: 4, max_new_tokens: 8}
executor: local
resources: {timeout_min: 10}
"""


def test_local_end_to_end_one_failure_does_not_stop_the_other(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(LOCAL)
    good, bad = expand(load_manifest(tmp_path / "m.yaml"))
    bad.run_dir.mkdir(parents=True)
    (bad.run_dir / "metrics.json").write_text("{corrupt")  # this job fails when it reads it

    text = _submit(Path("m.yaml"), executor="local")
    assert "running 2 jobs locally" in text
    assert f"{good.job_id} A seed 0: done" in text
    # Not a terminal: one plain line per finished stage, with the job's last loss and tokens/s.
    assert re.search(rf"{good.job_id} A seed 0 ca: stage 1/1 done \(loss \d+\.\d{{3}}, [\d,]+ tok/s", text), text
    assert "\x1b" not in text
    assert f"{bad.job_id} B seed 0: failed (trajhpc.core.errors.InputError: " in text and "not valid JSON" in text
    metrics = json.loads((good.run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["job_id"] == good.job_id
    record = json.loads((good.run_dir / "submission.json").read_text())
    assert record["executor"] == "local" and record["local_pid"] > 0 and record["slurm_job_id"] is None
    assert Path(record["stdout"]).parent == Path(record["submitit_folder"])
    # The job's log: its own lines, none of the libraries' noise (trajhpc.job.logfilters).
    log = Path(record["stdout"]).read_text() + Path(record["stderr"]).read_text()
    assert "stage 1/1: evaluating" in log
    assert "kernels-community" not in log and "gemm_4bit_forward" not in log
    assert "is_gradient_checkpointing" not in log and "FutureWarning" not in log
    assert [(e["stage"], e["step"]) for e in map(json.loads, (good.run_dir / "train_log.jsonl").read_text().splitlines())] == [(1, 1)]

    # Again: the done job is skipped, the failed one (fixed now) resubmitted and completed.
    (bad.run_dir / "metrics.json").unlink()
    text = _submit(Path("m.yaml"), executor="local")
    assert "2 jobs: 1 to submit, 1 done (skipped), 0 queued or running (left alone)" in text
    assert f"{bad.job_id} B seed 0: done" in text
    record = json.loads((bad.run_dir / "submission.json").read_text())
    assert len(record["previous"]) == 1


def test_missing_image_or_bind_source_fails_at_submit_time(fake_slurm, tmp_path):
    text = MANIFEST + "container:\n  runtime: apptainer\n  image: t.sif\n  binds:\n    - /data\n    - ~/nowhere-xyz\n"
    (tmp_path / "m.yaml").write_text(text)
    dry = _submit(Path("m.yaml"), dry_run=True)  # a dry run only warns, each warning one line
    assert "sbatch script for 4 jobs" in dry
    warnings = [line for line in dry.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3, dry  # the image, and the two bind sources
    assert re.search(r"m\.yaml:8: container\.image: image file .*t\.sif not found .*a real submit stops here$", warnings[0])
    assert all(re.search(r"container\.binds\.[01]: .* does not exist .*a real submit stops here$", w) for w in warnings[1:])
    with pytest.raises(InputError, match=r"m\.yaml:8: container\.image: image file .*t\.sif not found"):
        _submit(Path("m.yaml"))
    (tmp_path / "t.sif").write_bytes(b"x")
    (tmp_path / "data").mkdir()
    (tmp_path / "m.yaml").write_text(text.replace("- /data", f"- {tmp_path}/data"))
    with pytest.raises(InputError, match=r"m\.yaml:11: container\.binds\.1: .*nowhere-xyz does not exist"):
        _submit(Path("m.yaml"))
    assert not list(fake_slurm.glob("sbatch-*"))
    # With both in place it goes out, and each job's context carries the image and its digest.
    from submitit.core.utils import DelayedSubmission

    (tmp_path / "m.yaml").write_text(text.replace("- /data", f"- {tmp_path}/data").replace("    - ~/nowhere-xyz\n", ""))
    assert "submitted 4 jobs" in _submit(Path("m.yaml"))
    record = next(iter(_records(tmp_path).values()))
    delayed = DelayedSubmission.load(Path(record["submitit_folder"]) / f"{record['slurm_job_id']}_submitted.pkl")
    spec, job_dir, study, context = delayed.args
    assert type(delayed.function).__name__ == "JobTask" and study == "st" and Path(job_dir).is_absolute()
    assert context["container_image"] == str(tmp_path / "t.sif")
    assert context["container_digest"] == "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert context["executor"] == "slurm" and context["manifest"] == str(tmp_path / "m.yaml")
    assert "apptainer exec --bind" in (fake_slurm / "sbatch-0.sh").read_text()


# ---------------------------------------------------------------- one submit at a time; interrupted submits


@pytest.fixture
def queued_slurm(tmp_path, monkeypatch):
    """A fake Slurm that remembers: sbatch (taking $SBATCH_DELAY s) counts its calls and queues the
    array as PENDING for sacct, and squeue --name lists it with its batch script, as the real ones do."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "states").write_text("JobID|State|NodeList|JobName\n")
    (bin_dir / "queue").write_text("")
    scripts = {
        "sbatch": f"echo x >> {bin_dir}/sbatch.calls; id=$((99 + $(wc -l < {bin_dir}/sbatch.calls))); sleep ${{SBATCH_DELAY:-0}}\n"
        "last=$(sed -n 's/^#SBATCH --array=0-\\([0-9]*\\).*/\\1/p' \"$1\")\n"
        f'echo "${{id}}_[0-$last]|PENDING||trajhpc-st" >> {bin_dir}/states\n'
        f'echo "${{id}}_[0-$last]|$1" >> {bin_dir}/queue\n'
        'echo "Submitted batch job $id"',
        "srun": "exit 0",
        "sacct": f"cat {bin_dir}/states",
        "squeue": f'case "$*" in *--name=*) cat {bin_dir}/queue;; esac',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(MANIFEST)
    return bin_dir


def _sbatch_calls(bin_dir: Path) -> int:
    calls = bin_dir / "sbatch.calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_concurrent_submits_send_each_job_once(queued_slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("SBATCH_DELAY", "1")  # both would read the job states before either wrote a record
    outputs, errors = [], []

    def submit():
        try:
            outputs.append(_submit(Path("m.yaml")))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(outputs) == 2
    assert _sbatch_calls(queued_slurm) == 1
    first, second = sorted(outputs, key=lambda text: "submitted 4 jobs" not in text)
    assert "submitted 4 jobs as Slurm array 100" in first
    assert "4 jobs: 0 to submit, 0 done (skipped), 4 queued or running (left alone)" in second
    assert sorted(r["slurm_job_id"] for r in _records(tmp_path).values()) == ["100_0", "100_1", "100_2", "100_3"]
    assert not (tmp_path / "jobs" / "st" / ".submitting.json").exists()


def test_a_held_lock_makes_submit_wait_then_fail_clearly(queued_slurm, tmp_path, monkeypatch):
    from filelock import FileLock

    import trajhpc.launch.submission as submission_mod

    monkeypatch.setattr(submission_mod, "LOCK_TIMEOUT_S", 0.3)
    (tmp_path / "jobs" / "st").mkdir(parents=True)
    out = io.StringIO()
    with FileLock(tmp_path / "jobs" / "st" / ".submit.lock"):
        with pytest.raises(TrajhpcError, match=r"another trajhpc submit of study st still holds .*\.submit\.lock after 0 s"):
            submit_command(Console(file=out, width=300, color_system=None), Path("m.yaml"), dry_run=False,
                           run_root=None, executor=None, wait=False)
    assert "another trajhpc submit of study st is running; waiting up to 0 s" in out.getvalue()
    assert _sbatch_calls(queued_slurm) == 0
    # A dry run only reads: it never waits for the lock.
    with FileLock(tmp_path / "jobs" / "st" / ".submit.lock"):
        assert "4 to submit" in _submit(Path("m.yaml"), dry_run=True)


def test_submit_killed_after_sbatch_is_recovered_not_resubmitted(queued_slurm, tmp_path, monkeypatch):
    import trajhpc.launch.submit as launch_mod

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between sbatch and the records

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(launch_mod, "write_record", killed)
        _submit(Path("m.yaml"))
    assert _sbatch_calls(queued_slurm) == 1 and not _records(tmp_path)
    assert (tmp_path / "jobs" / "st" / ".submitting.json").exists()

    text = _submit(Path("m.yaml"))
    assert "interrupted after Slurm accepted its 4 jobs (job 100): recorded them" in text
    assert "4 jobs: 0 to submit, 0 done (skipped), 4 queued or running (left alone)" in text
    assert _sbatch_calls(queued_slurm) == 1
    records = _records(tmp_path)
    assert sorted(r["slurm_job_id"] for r in records.values()) == ["100_0", "100_1", "100_2", "100_3"]
    assert all(r["recovered"] and r["stderr"].endswith(f"{r['slurm_job_id']}_0_log.err") for r in records.values())
    analysis = load_manifest(tmp_path / "m.yaml").analysis.document()  # carried by the journal
    assert all(r["analysis"] == analysis and r["analysis_sha256"] for r in records.values())
    assert not (tmp_path / "jobs" / "st" / ".submitting.json").exists()


class _DiesInMapArray:
    """An executor whose process dies inside map_array: before submitit wrote the batch script
    (so before sbatch), or after (so sbatch may have run)."""

    def __init__(self, launch, wrote_script: bool):
        self.folder, self.wrote_script = launch.folder, wrote_script

    def map_array(self, *args):
        if self.wrote_script:
            (self.folder / ".submission_file_0123.sh").write_text("#!/bin/sh\n")
        raise KeyboardInterrupt


def _killed_in_map_array(monkeypatch, wrote_script: bool) -> None:
    import trajhpc.launch.submit as launch_mod

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(launch_mod, "make_slurm_executor", lambda launch: _DiesInMapArray(launch, wrote_script))
        _submit(Path("m.yaml"))


def test_submit_killed_before_sbatch_submits_again(queued_slurm, tmp_path, monkeypatch):
    _killed_in_map_array(monkeypatch, wrote_script=False)
    assert (tmp_path / "jobs" / "st" / ".submitting.json").exists() and _sbatch_calls(queued_slurm) == 0

    for name in ("squeue", "sacct"):  # the journal's folder alone shows sbatch never ran: Slurm is not asked
        (queued_slurm / name).write_text("#!/bin/sh\necho asked >> $0.calls\nexit 1\n")
    text = _submit(Path("m.yaml"))
    assert "stopped before it called sbatch" in text and "they are submitted again" in text
    assert "submitted 4 jobs as Slurm array 100" in text and _sbatch_calls(queued_slurm) == 1
    assert not (queued_slurm / "squeue.calls").exists() and not (queued_slurm / "sacct.calls").exists()


def test_submit_killed_while_sbatch_may_run_asks_slurm(queued_slurm, tmp_path, monkeypatch):
    _killed_in_map_array(monkeypatch, wrote_script=True)
    text = _submit(Path("m.yaml"))
    assert "interrupted before Slurm accepted its 4 jobs: they are submitted again" in text
    assert "submitted 4 jobs as Slurm array 100" in text and _sbatch_calls(queued_slurm) == 1


def test_an_interrupted_submit_is_never_guessed_when_slurm_is_down(queued_slurm, tmp_path, monkeypatch):
    _killed_in_map_array(monkeypatch, wrote_script=True)
    for name in ("squeue", "sacct"):
        (queued_slurm / name).write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    with pytest.raises(TrajhpcError, match="cannot ask Slurm whether the interrupted submission reached it"):
        _submit(Path("m.yaml"))
    assert (tmp_path / "jobs" / "st" / ".submitting.json").exists() and _sbatch_calls(queued_slurm) == 0


# ---------------------------------------------------------------- a machine without Slurm (issue 22 item 8)


@pytest.fixture
def no_slurm(tmp_path, monkeypatch):
    """PATH holds no Slurm command (only an empty folder): a laptop, a workstation."""
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(MANIFEST.replace("executor: auto", "executor: slurm"))
    return tmp_path


def test_executor_slurm_without_slurm_is_one_line_exit_2_and_leaves_nothing(no_slurm):
    out = subprocess.run([sys.executable, "-m", "trajhpc.cli", "submit", "m.yaml"], cwd=no_slurm,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: executor slurm: this machine has no Slurm (sbatch and srun not found on PATH); "
        "submit from a Slurm login node, or run here with --executor local"
    ]
    assert not (no_slurm / "jobs").exists()  # no journal, no spec, no lock, no study folder
    dry = _submit(Path("m.yaml"), dry_run=True)  # a dry run still shows the script, and warns
    assert "sbatch script for 4 jobs" in dry
    assert "warning: sbatch and srun not found on PATH: this machine has no Slurm; a real submit stops here" in dry


def test_a_journal_whose_sbatch_never_ran_does_not_need_slurm(no_slurm):
    """A journal left by a start that failed before sbatch (trajhpc < this fix left one when
    submitit found no srun): a local submit on a machine without Slurm is not stuck on it."""
    from trajhpc.launch.submission import JOURNAL, recover_interrupted

    study = no_slurm / "jobs" / "st"
    (study / ".submitit" / "20261206T000000-abcdef").mkdir(parents=True)
    (study / JOURNAL).write_text(json.dumps({
        "schema": "trajhpc.submitting/1", "since": "2026-12-06T00:00:00+00:00",
        "folder": str(study / ".submitit" / "20261206T000000-abcdef"), "job_name": "trajhpc-st",
        "manifest": None, "analysis": None, "jobs": ["a", "b"],
    }))
    out = io.StringIO()
    recover_interrupted(Console(file=out, width=300), study)
    assert "stopped before it called sbatch" in out.getvalue() and not (study / JOURNAL).exists()
    # One whose batch script was written may have reached Slurm: never guessed.
    (study / ".submitit" / "20261206T000000-abcdef" / "100_submission.sh").write_text("#!/bin/sh\n")
    (study / JOURNAL).write_text(json.dumps({
        "schema": "trajhpc.submitting/1", "since": "2026-12-06T00:00:00+00:00",
        "folder": str(study / ".submitit" / "20261206T000000-abcdef"), "job_name": "trajhpc-st", "jobs": ["a"],
    }))
    with pytest.raises(TrajhpcError, match="cannot ask Slurm whether the interrupted submission reached it"):
        recover_interrupted(Console(file=io.StringIO()), study)
    assert (study / JOURNAL).exists()


def test_a_failed_slurm_start_leaves_no_journal(fake_slurm, tmp_path, monkeypatch):
    import trajhpc.launch.submit as launch_mod

    def no_srun(launch):  # what submitit raises when it finds no srun
        raise RuntimeError('Could not detect "srun", are you indeed on a slurm cluster?')

    (tmp_path / "m.yaml").write_text(MANIFEST)
    monkeypatch.setattr(launch_mod, "make_slurm_executor", no_srun)
    with pytest.raises(TrajhpcError, match='cannot set up the Slurm submission: Could not detect "srun"'):
        _submit(Path("m.yaml"))
    assert not (tmp_path / "jobs" / "st" / ".submitting.json").exists()


# ---------------------------------------------------------------- exit statuses and leftovers


def test_a_refused_submit_leaves_no_lock_file_and_no_empty_study_folder(fake_slurm, tmp_path):
    (tmp_path / "m.yaml").write_text(MANIFEST + "container:\n  runtime: apptainer\n  image: t.sif\n")
    with pytest.raises(InputError, match="t.sif not found"):
        _submit(Path("m.yaml"))
    assert not (tmp_path / "jobs" / "st").exists()
    (tmp_path / "t.sif").write_bytes(b"x")
    assert "submitted 4 jobs" in _submit(Path("m.yaml"))
    assert not (tmp_path / "jobs" / "st" / ".submit.lock").exists()


def test_disk_full_writing_the_records_is_one_clear_error_and_recovered_later(queued_slurm, tmp_path, monkeypatch):
    import errno

    import trajhpc.core.atomic as atomic_mod

    write = atomic_mod._write

    def full(path, data):
        if path.name == "submission.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, data)

    with monkeypatch.context() as m:
        m.setattr(atomic_mod, "_write", full)
        with pytest.raises(TrajhpcError, match=r"cannot write .*submission\.json: No space left on device; "
                                               r"Slurm accepted the jobs \(job 100\)"):
            _submit(Path("m.yaml"))
    assert not list((tmp_path / "jobs" / "st").glob("*/.submission.json.*.tmp"))
    text = _submit(Path("m.yaml"))  # space again: the journal records the array, nothing goes out twice
    assert "recorded them" in text and _sbatch_calls(queued_slurm) == 1


def test_submit_wait_exits_3_when_jobs_fail(fake_slurm, tmp_path):
    (tmp_path / "m.yaml").write_text(MANIFEST)
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    # sacct lists none of the jobs: they ended (not found) without finishing.
    code = submit_command(console, Path("m.yaml"), dry_run=False, run_root=None, executor=None, wait=True)
    assert code == 3 and "4 jobs did not finish" in out.getvalue()


def test_wait_status():
    from trajhpc.launch.status import Row
    from trajhpc.launch.submit import wait_status

    def rows(*labels):
        return [Row(str(i), "A", "0", "x", "", label, "", "") for i, label in enumerate(labels)]

    console = Console(file=io.StringIO())
    assert wait_status(console, rows("done", "done")) == 0
    assert wait_status(console, rows("done", "failed")) == 3
    assert wait_status(console, rows("done", "interrupted")) == 3
    assert wait_status(console, rows("cancelled")) == 3
    assert wait_status(console, rows("failed", "running")) == 130  # the wait itself was interrupted


def test_local_submit_with_a_failed_job_exits_3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the manifest's run root, jobs/, is relative
    (tmp_path / "m.yaml").write_text(LOCAL.replace("conditions: [A, B]", "conditions: [B]"))
    (job,) = expand(load_manifest(tmp_path / "m.yaml"))
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "metrics.json").write_text("{corrupt")  # fails as soon as it starts
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "submit", "m.yaml"], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert out.returncode == 3, out.stdout + out.stderr
    # Its metrics.json is damaged, so status calls it corrupt (with the reason), and it did not finish.
    assert "1 job: 1 corrupt" in out.stdout and "1 job did not finish" in out.stdout
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- terminal output that fits


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", ["smoke.yaml", "grid.yaml", "factorial.yaml"])
def test_dry_run_table_and_lines_fit_the_terminal(tmp_path, monkeypatch, name, width):
    from conftest import assert_fits

    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    submit_command(console, REPO / "manifests" / name, dry_run=True, run_root=tmp_path / "runs", executor="local", wait=False)
    text = out.getvalue()
    table, rest = text.split(" to submit, ", 1)
    assert_fits(table.rsplit("\n", 1)[0], width, ["arm", "seed", "state", "action"])
    lines = text.splitlines()
    counts = next(line for line in lines if " to submit, " in line)
    assert counts.endswith("queued or running (left alone)")  # one line, whatever the width
    assert all(line.endswith("a real submit stops here") or line.endswith("would fail")
               for line in lines if line.startswith("warning: "))
    jobs = expand(load_manifest(REPO / "manifests" / name))
    arms = list(dict.fromkeys(job.spec.arm for job in jobs))
    shown = [line.split("│")[2 if "job id" in table else 1].strip() for line in lines if line.startswith("│")]
    assert list(dict.fromkeys(shown)) == arms  # in the manifest's order
    if width == 120:
        assert "job id" in table and "order" in table and "not shown" not in text


# ---------------------------------------------------------------- a job Slurm still holds, whatever the executor (issue 22 item 9)


def test_still_held_by_slurm():
    from trajhpc.launch.slurmheld import still_held
    from trajhpc.launch.slurmquery import SlurmInfo

    ids = {"a": ("7_0", "trajhpc-st"), "b": ("7_1", "trajhpc-st"), "c": ("8", "trajhpc-st"), "d": ("9", None)}
    live = {"7_0": SlurmInfo("PENDING", "trajhpc-st"), "7_1": SlurmInfo("COMPLETED", "trajhpc-st"),
            "8": SlurmInfo("RUNNING", "someone-else"), "9": SlurmInfo("RUNNING", "x")}
    # pending: held; ended: not; an id reused by another job: not ours; a record without a name: held
    assert still_held(ids, live) == {"a": "PENDING", "d": "RUNNING"}
    assert still_held(ids, {}) == {}


def test_a_local_submit_leaves_a_job_slurm_still_holds(fake_slurm, tmp_path):
    """sacct still holds an older, ended job of the same id (ids restart when a cluster's state is
    wiped) while the controller has ours pending: the local submit asks squeue before it takes
    the job over, leaves it, and says so; its record still names Slurm."""
    (tmp_path / "m.yaml").write_text(MANIFEST.replace("conditions: [A, B]", "conditions: [A]").replace("[0, 1]", "[0]"))
    assert "submitted 1 job as Slurm job 100" in _submit(Path("m.yaml"))
    (fake_slurm / "states").write_text("JobID|State|NodeList|JobName\n100|COMPLETED|vm|trajhpc-st\n")
    (fake_slurm / "squeue").write_text("#!/bin/sh\nprintf '100|PENDING||trajhpc-st\\n'\n")
    (job,) = expand(load_manifest(tmp_path / "m.yaml"))
    (job.run_dir / "metrics.json").write_text("{corrupt")  # were it run here, it would fail at once
    text = _submit(Path("m.yaml"), executor="local")
    assert "1 job: 0 to submit, 0 done (skipped), 1 queued or running (left alone)" in text, text
    assert ("1 job still pending or running in Slurm (job 100): left alone, a local submit does not take over "
            "a Slurm job (scancel 100 first to run it here)") in text
    assert "running 1 job locally" not in text
    record = _records(tmp_path)[job.job_id]
    assert record["executor"] == "slurm" and record["slurm_job_id"] == "100" and record["previous"] == []


# ---------------------------------------------------------------- SIGTERM to a local submit (issue 22 item 16)


def test_sigterm_to_a_local_submit_stops_its_job_like_ctrl_c(tmp_path, monkeypatch):
    import signal
    import time

    monkeypatch.chdir(tmp_path)  # the manifest's run root, jobs/, is relative
    (tmp_path / "m.yaml").write_text(LOCAL.replace("conditions: [A, B]", "conditions: [B]").replace("max_steps: 1", "max_steps: 400"))
    (job,) = expand(load_manifest(tmp_path / "m.yaml"))
    proc = subprocess.Popen([sys.executable, "-m", "trajhpc.cli", "submit", "m.yaml"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = job.run_dir / "state.json"
    end = time.monotonic() + 240
    while not (state.exists() and json.loads(state.read_text() or "{}").get("state") == "running"):
        assert proc.poll() is None and time.monotonic() < end, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout + stderr
    assert stderr.strip().splitlines()[-1] == "terminated (SIGTERM)", stderr
    # Its job was stopped as Ctrl-C stops it: interrupted, resumable, and its process gone.
    pid = json.loads((job.run_dir / "submission.json").read_text())["local_pid"]
    while json.loads(state.read_text()).get("state") == "running" or Path(f"/proc/{pid}").exists():
        assert time.monotonic() < end + 60, state.read_text()
        time.sleep(0.5)
    assert json.loads(state.read_text())["state"] == "interrupted"
