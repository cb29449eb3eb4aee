"""A job killed anywhere and started again ends EQUAL to an uninterrupted run.

Kills are simulated with the job's test-only fault injection point
(``TRAJHPC_FAULT_INJECT``, see trajhpc/job.py), which raises a BaseException like
a SIGKILL would end the process: nothing after it runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajhpc.job.run import FAULT_ENV, InjectedFault, run_job
from trajhpc.spec import JobSpec

SPEC = JobSpec.model_validate(
    {
        "condition": "B",
        "order": ["medication-treatment", "care-appointments"],
        "seed": 3,
        "data": {"max_train_per_block": 16, "max_heldout_per_block": 3},
        # 2 micro-batches per step and dropout on: RNG and optimizer state both matter.
        "train": {"max_steps": 3, "batch_size": 4, "grad_accum": 2, "max_seq_len": 384, "lr": 1e-3},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "eval": {"batch_size": 8, "max_new_tokens": 8},
    }
)

TIMING_KEYS = ("train_seconds", "eval_seconds")


def train_steps(job_dir: Path) -> list[dict]:
    """train_log.jsonl without its timings: every optimizer step the job took, in order."""
    lines = (job_dir / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


def comparable(job_dir: Path) -> dict:
    """Everything a job computes, minus timings, resources and provenance."""
    metrics = json.loads((job_dir / "metrics.json").read_text())
    for key in ("resources", "provenance"):
        metrics.pop(key)
    for stage in metrics["stages"]:
        for key in TIMING_KEYS:
            stage.pop(key)
    predictions = {p.name: p.read_bytes() for p in sorted((job_dir / "predictions").glob("*.jsonl"))}
    ckpt = job_dir / "checkpoint"
    return {
        "metrics": metrics,
        "tokens": (job_dir / "tokens.json").read_bytes(),
        "predictions": predictions,
        "adapter": (ckpt / "adapter" / "adapter_model.safetensors").read_bytes(),
        "trainer_state": json.loads((ckpt / "trainer_state.json").read_text()) | {"train_seconds": None},
        "train_log": train_steps(job_dir),
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    job_dir = tmp_path_factory.mktemp("reference")
    run_job(SPEC, job_dir, study="resume-test")
    return comparable(job_dir)


def test_reference_run_is_complete_and_trains(reference):
    metrics = reference["metrics"]
    assert metrics["complete"] is True
    assert [s["stage"] for s in metrics["stages"]] == [0, 1, 2]
    assert all(isinstance(s["train_loss"], float) for s in metrics["stages"][1:])
    assert [(e["stage"], e["step"]) for e in reference["train_log"]] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert set(reference["predictions"]) == {"stage-0.jsonl", "stage-1.jsonl", "stage-2.jsonl"}


def test_same_seed_same_results(tmp_path, reference):
    run_job(SPEC, tmp_path / "again", study="resume-test")
    assert comparable(tmp_path / "again") == reference


@pytest.mark.parametrize(
    "fault",
    [
        "after-stage:0",  # killed right after the untrained evaluation
        "after-stage:1",  # killed between stages
        "stage:2:step:2",  # killed mid-stage: stage 2 is retrained from checkpoint 1
        "after-checkpoint:2",  # killed after the last checkpoint, before its evaluation
    ],
)
def test_resume_after_kill_equals_uninterrupted(tmp_path, monkeypatch, reference, fault):
    job_dir = tmp_path / "job"
    monkeypatch.setenv(FAULT_ENV, fault)
    with pytest.raises(InjectedFault):
        run_job(SPEC, job_dir, study="resume-test")
    state = json.loads((job_dir / "state.json").read_text())
    assert state["state"] == "running"  # a kill leaves no "failed" mark
    assert not json.loads((job_dir / "metrics.json").read_text())["complete"]
    if fault.startswith("stage:"):  # killed mid-stage: the log holds that stage's first steps, to be retrained
        killed = [(e["stage"], e["step"]) for e in train_steps(job_dir)]
        assert killed == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
        with (job_dir / "train_log.jsonl").open("a") as f:
            f.write('{"stage": 2, "step": 3, "lo')  # and a line torn by the kill

    monkeypatch.delenv(FAULT_ENV)
    metrics = run_job(SPEC, job_dir, study="resume-test")
    assert metrics["complete"] is True
    assert metrics["provenance"]["resumed_after_stage"] is not None
    assert comparable(job_dir) == reference
    assert json.loads((job_dir / "state.json").read_text())["state"] == "done"


def test_interrupted_checkpoint_swap_is_repaired(tmp_path, monkeypatch, reference):
    """Killed between the two renames of the checkpoint swap: the complete new folder is used."""
    job_dir = tmp_path / "job"
    monkeypatch.setenv(FAULT_ENV, "after-checkpoint:1")
    with pytest.raises(InjectedFault):
        run_job(SPEC, job_dir, study="resume-test")
    (job_dir / "checkpoint").rename(job_dir / ".checkpoint.tmp")  # as if killed before the 2nd rename
    monkeypatch.delenv(FAULT_ENV)
    run_job(SPEC, job_dir, study="resume-test")
    assert comparable(job_dir) == reference
    assert not (job_dir / ".checkpoint.tmp").exists()


def test_complete_job_returns_at_once_without_loading_the_model(tmp_path, monkeypatch):
    job_dir = tmp_path / "job"
    first = run_job(SPEC, job_dir)
    import trajhpc.job.train

    def boom(*args, **kwargs):
        raise AssertionError("a complete job must not load the model")

    monkeypatch.setattr(trajhpc.job.train, "load_base_model", boom)
    assert run_job(SPEC, job_dir) == first


MATCHED = JobSpec.model_validate(
    {
        "condition": "A",
        "token_budget": {"match": "B", "count": "total"},
        "order": ["care-appointments", "cost-insurance-other"],
        "seed": 5,
        # B trains 2 steps x 4 examples on blocks of 6: the budget takes A over more than one pass.
        "data": {"max_train_per_block": 6, "max_heldout_per_block": 2},
        "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 384, "lr": 1e-3},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "eval": {"batch_size": 8, "max_new_tokens": 8},
    }
)


def test_token_matched_arm_killed_mid_stage_resumes_equal(tmp_path, monkeypatch):
    """A@B (total tokens) killed after step 1 of stage 2 ends equal to an uninterrupted run."""
    run_job(MATCHED, tmp_path / "reference", study="resume-test")
    reference = comparable(tmp_path / "reference")
    tokens = json.loads(reference["tokens"])
    assert tokens["arm"] == "A@B" and tokens["budget"]["consumed"] >= tokens["budget"]["budget"] > 0
    assert [t["budget_cumulative"] for t in tokens["stages"]][0] == 0
    assert any(t["passes"] > 1 for t in tokens["stages"])

    job_dir = tmp_path / "job"
    monkeypatch.setenv(FAULT_ENV, "stage:2:step:1")
    with pytest.raises(InjectedFault):
        run_job(MATCHED, job_dir, study="resume-test")
    assert len(json.loads((job_dir / "metrics.json").read_text())["stages"]) == 2  # stages 0 and 1 done
    monkeypatch.delenv(FAULT_ENV)
    metrics = run_job(MATCHED, job_dir, study="resume-test")
    assert metrics["complete"] is True and metrics["provenance"]["resumed_after_stage"] == 1
    assert comparable(job_dir) == reference


TOKEN_BATCHES = JobSpec.model_validate(
    SPEC.to_dict()
    | {
        # Batches by padded tokens over 1.5 passes (a data-dependent number of steps),
        # checkpointing decided by the memory estimate.
        "train": {"epochs": 1.5, "tokens_per_batch": 1024, "gradient_checkpointing": "auto", "grad_accum": 2,
                  "max_seq_len": 384, "lr": 1e-3},
    }
)


def test_token_batches_killed_mid_stage_resume_equal(tmp_path, monkeypatch):
    run_job(TOKEN_BATCHES, tmp_path / "reference", study="resume-test")
    reference = comparable(tmp_path / "reference")
    metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    assert metrics["resources"]["gradient_checkpointing"] is False  # the tiny model fits on CPU
    tokens = json.loads(reference["tokens"])["stages"]
    assert all(t["passes"] == 2 for t in tokens[1:])
    # Micro-batches are length-grouped inside each step of 16 examples only.
    assert all(t["padded_tokens"] < 1.25 * t["total_tokens"] for t in tokens[1:])

    job_dir = tmp_path / "job"
    monkeypatch.setenv(FAULT_ENV, "stage:2:step:2")
    with pytest.raises(InjectedFault):
        run_job(TOKEN_BATCHES, job_dir, study="resume-test")
    monkeypatch.delenv(FAULT_ENV)
    metrics = run_job(TOKEN_BATCHES, job_dir, study="resume-test")
    assert metrics["complete"] is True and metrics["provenance"]["resumed_after_stage"] == 1
    assert comparable(job_dir) == reference


# ---------------------------------------------------------------- nothing executable is loaded from a job directory


class _Exploit:
    """Unpickling this runs code (writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np
    import torch

    from trajhpc.job.checkpoint import _torch_bytes, load_tensors, rng_state, set_rng_state

    random.random(), np.random.standard_normal(), torch.rand(1)  # numpy now has a cached gaussian
    path = tmp_path / "checkpoint" / "rng.pt"
    path.parent.mkdir()
    path.write_bytes(_torch_bytes(rng_state()))
    expected = (random.random(), np.random.standard_normal(), torch.rand(3).tolist())
    set_rng_state(load_tensors(path))
    assert (random.random(), np.random.standard_normal(), torch.rand(3).tolist()) == expected


def test_a_pickled_or_damaged_checkpoint_file_is_refused_without_running_it(tmp_path):
    import torch

    from trajhpc.core.errors import TrajhpcError
    from trajhpc.job.checkpoint import load_tensors

    ckpt = tmp_path / "job" / "checkpoint"
    ckpt.mkdir(parents=True)
    marker = tmp_path / "marker"
    torch.save({"python": _Exploit(marker)}, ckpt / "rng.pt")
    with pytest.raises(TrajhpcError, match=r"rng\.pt: refusing to load it: it needs unpickling \(\S+\), which could"):
        load_tensors(ckpt / "rng.pt")
    assert not marker.exists()
    for damaged in (b"", b"not a torch file", (ckpt / "rng.pt").read_bytes()[:100]):
        (ckpt / "rng.pt").write_bytes(damaged)
        with pytest.raises(TrajhpcError, match=rf"{ckpt}/rng\.pt: damaged.*delete {tmp_path / 'job'}"):
            load_tensors(ckpt / "rng.pt")


def test_resume_refuses_a_crafted_rng_file_with_a_clean_error(tmp_path, monkeypatch, reference):
    """The job stops at the checkpoint's door: TrajhpcError naming the file, job marked failed, no code run."""
    import subprocess
    import sys

    import torch

    job_dir = tmp_path / "job"
    monkeypatch.setenv(FAULT_ENV, "after-stage:0")
    with pytest.raises(InjectedFault):
        run_job(SPEC, job_dir, study="resume-test")
    monkeypatch.delenv(FAULT_ENV)
    rng = job_dir / "checkpoint" / "rng.pt"
    good = rng.read_bytes()
    marker = tmp_path / "marker"
    torch.save({"numpy": _Exploit(marker)}, rng)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC.to_dict()))
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "run-job", str(spec_file), "--job-dir", str(job_dir)],
        capture_output=True, text=True, timeout=300,
    )
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]  # not library warnings
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{rng}: refusing to load it: it needs unpickling" in lines[0]
    assert not marker.exists()
    state = json.loads((job_dir / "state.json").read_text())
    assert state["state"] == "failed" and "rng.pt" in state["error"]
    # Restored, the job resumes and still ends equal to the uninterrupted run.
    rng.write_bytes(good)
    run_job(SPEC, job_dir, study="resume-test")
    assert comparable(job_dir) == reference


def test_a_checkpoint_write_that_fails_leaves_no_temp_folder_and_the_old_checkpoint(tmp_path):
    import errno
    import os

    from trajhpc.core.errors import TrajhpcError
    from trajhpc.job.checkpoint import CheckpointState, save_checkpoint

    class FullDisk:
        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "trainer_state.json").write_text("{}")
    with pytest.raises(TrajhpcError, match=r"cannot write the checkpoint in .*\.checkpoint\.tmp: No space left"):
        state = CheckpointState(job_id="x", stage=1, consumed=0, train_loss=None, train_seconds=0.0, tokens={})
        save_checkpoint(tmp_path, FullDisk(), None, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert (tmp_path / "checkpoint" / "trainer_state.json").read_text() == "{}"


def test_target_modules_are_written_sorted(tmp_path):
    from trajhpc.job.checkpoint import _sort_target_modules

    (tmp_path / "adapter_config.json").write_text(json.dumps({"target_modules": ["v_proj", "k_proj", "q_proj"]}))
    _sort_target_modules(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["k_proj", "q_proj", "v_proj"]
