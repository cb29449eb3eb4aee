"""`trajhpc submit` and `trajhpc status` against the real local Slurm cluster (scripts/slurm-ci-up.sh).

Real jobs on the tiny model: an array whose every task completes; a cancelled task
that status reports and a second submit reruns alone; a job whose time limit is
shorter than its work, requeued until it finishes with the same metrics as an
uninterrupted run. Skipped when Slurm is not installed or does not answer.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from trajhpc.job.run import FAULT_ENV
from trajhpc.launch.status import collect_rows
from trajhpc.launch.submit import submit_command
from trajhpc.study.grid import expand
from trajhpc.study.manifest import load_manifest

pytestmark = pytest.mark.slurm

TINY = """study: {study}
model: tiny
data: {{max_train_per_block: {train}, max_heldout_per_block: 2{blocks}}}
conditions: {conditions}
orders: [{order}]
train: {{max_steps: {steps}, batch_size: 2, max_seq_len: 512}}
eval: {{batch_size: 4, max_new_tokens: 8}}
executor: slurm
resources: {resources}
"""


@pytest.fixture
def study_dir(tmp_path, monkeypatch):
    """A fresh working directory (so a fresh submitit folder); cancels whatever is left on the way out."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    ids = {json.loads(p.read_text())["slurm_job_id"].split("_")[0] for p in tmp_path.glob("jobs/*/*/submission.json")}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], check=False)


def _write(path: Path, **fields) -> Path:
    values = {"conditions": "[A]", "order": "[care-appointments]", "train": 6, "steps": 2, "blocks": "",
              "resources": "{cpus_per_task: 1, mem_gb: 1, timeout_min: 5}"} | fields
    path.write_text(TINY.format(**values))
    return path


def _submit(manifest: Path) -> str:
    out = io.StringIO()
    submit_command(Console(file=out, width=200, color_system=None), manifest, dry_run=False, run_root=None,
                   executor="slurm", wait=False)
    return out.getvalue()


def _wait(manifest: Path, done, deadline_s: float, tick=None) -> list:
    """Poll status rows until ``done(rows)``; ``tick()`` runs at every poll."""
    dirs = [job.run_dir for job in expand(load_manifest(manifest))]
    end = time.monotonic() + deadline_s
    while True:
        if tick:
            tick()
        rows = collect_rows(dirs)
        if done(rows):
            return rows
        if time.monotonic() > end:
            pytest.fail(f"not there after {deadline_s:.0f} s: {[(r.job_id, r.slurm, r.label, r.detail) for r in rows]}")
        time.sleep(1.0)


def _record(job) -> dict:
    return json.loads((job.run_dir / "submission.json").read_text())


def test_array_every_task_completes_and_its_files_land(study_dir):
    manifest = _write(study_dir / "m.yaml", study="arr", conditions="[A, B, calls-only]")
    text = _submit(manifest)
    assert "3 jobs: 3 to submit" in text and "as Slurm array" in text
    jobs = expand(load_manifest(manifest))
    ids = [_record(j)["slurm_job_id"] for j in jobs]
    array = ids[0].split("_")[0]
    assert ids == [f"{array}_{i}" for i in range(3)]  # one array, one task per job

    _wait(manifest, lambda rows: all(r.label == "done" for r in rows), 180)
    for job in jobs:
        metrics = json.loads((job.run_dir / "metrics.json").read_text())
        assert metrics["complete"] and metrics["job_id"] == job.job_id
        assert (job.run_dir / "tokens.json").is_file() and list((job.run_dir / "predictions").glob("stage-*.jsonl"))
        assert metrics["provenance"]["slurm_job_id"] == _record(job)["slurm_job_id"]
    # sacct (it lags a few seconds) ends up saying COMPLETED for every task
    _wait(manifest, lambda rows: all(r.slurm == "COMPLETED" for r in rows), 30)
    assert "3 jobs: 0 to submit, 3 done (skipped)" in _submit(manifest)


def _wait_running(slurm_id: str, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        out = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], capture_output=True, text=True)
        if out.stdout.strip() == "RUNNING":
            return
        time.sleep(0.2)
    pytest.fail(f"{slurm_id} never ran")


def test_cancelled_task_is_reported_and_only_it_reruns(study_dir):
    # One task at a time, so the first one can be cancelled while it runs. (A task
    # cancelled before it starts leaves no record in Slurm: status says "not found".)
    manifest = _write(study_dir / "m.yaml", study="cancel", conditions="[A, B, calls-only]", steps=150,
                      resources="{cpus_per_task: 1, mem_gb: 1, timeout_min: 5, array_parallelism: 1}")
    _submit(manifest)
    jobs = expand(load_manifest(manifest))
    victim = _record(jobs[0])["slurm_job_id"]
    _wait_running(victim)
    stage0 = jobs[0].run_dir / "predictions" / "stage-0.jsonl"
    end = time.monotonic() + 120
    while not stage0.exists():  # cancel it while it trains, its handlers in place
        assert time.monotonic() < end, "the job never evaluated stage 0"
        time.sleep(0.2)
    subprocess.run(["scancel", victim], check=True)

    rows = _wait(manifest, lambda rs: [r.label for r in rs] == ["cancelled", "done", "done"], 180)
    assert rows[0].slurm == "CANCELLED"
    # It stopped on Slurm's SIGTERM (trajhpc.job.stopping), not by the SIGKILL after it.
    state = json.loads((jobs[0].run_dir / "state.json").read_text())
    assert state["state"] == "interrupted" and not (jobs[0].run_dir / ".lock").exists(), state
    before = [_record(j) for j in jobs]

    text = _submit(manifest)
    assert "3 jobs: 1 to submit, 2 done (skipped), 0 queued or running (left alone)" in text
    after = [_record(j) for j in jobs]
    assert after[1:] == before[1:]  # the done ones were not touched
    assert after[0]["slurm_job_id"] != victim and after[0]["previous"][0]["slurm_job_id"] == victim
    _wait(manifest, lambda rs: all(r.label == "done" for r in rs), 120)


def _scores(metrics: dict) -> dict:
    """What must not depend on being interrupted: losses and scores (not timings or provenance)."""
    return {
        "stages": [{k: s[k] for k in ("stage", "trained_block", "train_loss", "per_block")} for s in metrics["stages"]],
        "final": metrics["final"],
    }


# Six small blocks (by the first letter of the dialogue's opening line), so every
# attempt of the interrupted job completes at least one stage even on a busy machine.
SIX_BLOCKS = (
    ", blocks: {kind: lv3-rules, default: k5, rules: [{block: k0, regex: '^[a-b]'}, {block: k1, regex: '^c'},"
    " {block: k2, regex: '^[d-h]'}, {block: k3, regex: '^[i-o]'}, {block: k4, regex: '^[p-r]'}]}"
)


@pytest.mark.slow
def test_time_limit_shorter_than_the_work_requeues_and_gives_the_same_metrics(study_dir, monkeypatch):
    # Slurm warns (USR2) `signal_delay_s` plus its ~30 s timer slack before the 1-min
    # limit, i.e. 25-35 s in; the job needs ~60 s (6 stages of 50 steps, each step
    # followed by 0.12 s of sleep: ~7-9 s a stage whatever the CPU, after ~10 s of
    # imports), so it is interrupted at least once, and every attempt has time to
    # finish a stage and resume from it. The sleep (test-only, TRAJHPC_FAULT_INJECT)
    # reaches the Slurm job through sbatch's exported environment.
    monkeypatch.setenv(FAULT_ENV, "slow:120")
    common = {"order": "[k0, k1, k2, k3, k4, k5]", "train": 16, "steps": 50, "blocks": SIX_BLOCKS}
    short = _write(study_dir / "short.yaml", study="short", **common,
                   resources="{cpus_per_task: 1, mem_gb: 1, timeout_min: 1, signal_delay_s: 5, max_requeues: 10}")
    ref = _write(study_dir / "ref.yaml", study="ref", **common)
    _submit(short)
    _submit(ref)
    (job,), (ref_job,) = expand(load_manifest(short)), expand(load_manifest(ref))
    assert job.job_id == ref_job.job_id  # the same spec: only the study (folder) differs
    slurm_id = _record(job)["slurm_job_id"]

    def release_requeued():
        # A requeued job waits for its old credentials to expire (120 s) before it may start again.
        out = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T %r"], capture_output=True, text=True)
        if out.stdout.strip() == "PENDING BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=False)

    _wait(short, lambda rows: rows[0].label == "done", 400, tick=release_requeued)
    _wait(ref, lambda rows: rows[0].label == "done", 180)

    history = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", "-o", "State", "-j", slurm_id],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "REQUEUED" in history, history  # it really was interrupted
    interrupted = json.loads((job.run_dir / "metrics.json").read_text())
    reference = json.loads((ref_job.run_dir / "metrics.json").read_text())
    assert _scores(interrupted) == _scores(reference)


def test_a_local_submit_leaves_a_job_pending_in_slurm_alone(study_dir):
    """A job held in Slurm's queue (pending): `submit --executor local` asks Slurm, runs nothing, says
    why, and the job's record still names its Slurm id (issue 22 item 9)."""
    manifest = _write(study_dir / "m.yaml", study="held", conditions="[A, B]",
                      resources="{cpus_per_task: 1, mem_gb: 1, timeout_min: 5, extra_sbatch: {hold: true}}")
    assert "submitted 2 jobs as Slurm array" in _submit(manifest)
    before = {job.job_id: _record(job) for job in expand(load_manifest(manifest))}
    array = next(iter(before.values()))["slurm_job_id"].split("_")[0]
    out = io.StringIO()
    code = submit_command(Console(file=out, width=300, color_system=None), manifest, dry_run=False, run_root=None,
                          executor="local", wait=False)
    text = out.getvalue()
    assert code == 0, text
    assert "2 jobs: 0 to submit, 0 done (skipped), 2 queued or running (left alone)" in text
    assert f"2 jobs still pending or running in Slurm (job {array}): left alone" in text
    assert "locally" not in text
    assert {job.job_id: _record(job) for job in expand(load_manifest(manifest))} == before
