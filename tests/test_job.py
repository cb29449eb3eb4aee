"""One job end to end: the job directory contract, token-matched arms, refusals, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cloudpickle
import pytest
import submitit
from rich.console import Console

from trajhpc import provenance
from trajhpc.errors import TrajhpcError
from trajhpc.job import JobTask, final_summary, run_job, run_job_command
from trajhpc.spec import JobSpec

ORDER = ["cost-insurance-other", "care-appointments"]
ALL_BLOCKS = {"care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other"}
BASE = {
    "condition": "B",
    "order": ORDER,
    "seed": 1,
    "data": {"max_train_per_block": 12, "max_heldout_per_block": 2},
    "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 384},
    "lora": {"r": 4, "alpha": 8},
    "eval": {"batch_size": 8, "max_new_tokens": 4},
}
CONTEXT = {"container_image": "/images/trajhpc.sif", "container_digest": "sha256:0123abcd"}


def spec_of(**changes) -> JobSpec:
    return JobSpec.model_validate(BASE | changes)


def read(job_dir: Path, name: str):
    return json.loads((job_dir / name).read_text())


@pytest.fixture(scope="module")
def done_job(tmp_path_factory) -> Path:
    """A complete condition-B job, run as Slurm array task 77_3 with a container context."""
    job_dir = tmp_path_factory.mktemp("jobs") / "b"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_JOB_ID", "80")
        mp.setenv("SLURM_ARRAY_JOB_ID", "77")
        mp.setenv("SLURM_ARRAY_TASK_ID", "3")
        run_job(spec_of(), job_dir, study="s1", context=CONTEXT)
    return job_dir


def test_job_directory_follows_the_contract(done_job):
    spec = spec_of()
    assert read(done_job, "spec.json") == spec.to_dict()

    state = read(done_job, "state.json")
    assert state["state"] == "done" and state["stage"] == 2 and state["n_stages"] == 2
    assert state["error"] is None and state["ended"] and state["slurm_job_id"] == "77_3"

    tokens = read(done_job, "tokens.json")
    assert tokens["schema"] == "trajhpc.tokens/1" and tokens["job_id"] == spec.job_id
    assert tokens["condition"] == "B" and tokens["arm"] == "B" and tokens["budget"] is None
    zero, *trained = tokens["stages"]
    assert zero == {"stage": 0, "block": None, "examples": 0, "prompt_tokens": 0, "supervised_tokens": 0,
                    "total_tokens": 0, "padded_tokens": 0, "passes": 0}
    assert [t["block"] for t in trained] == ORDER
    for t in trained:
        assert t["examples"] == 8 and t["passes"] == 1  # 2 steps x batch 4 of 12 examples
        assert t["prompt_tokens"] + t["supervised_tokens"] == t["total_tokens"] <= t["padded_tokens"]

    metrics = read(done_job, "metrics.json")
    assert metrics["schema"] == "trajhpc.metrics/1" and metrics["complete"] is True
    assert {k: metrics[k] for k in ("job_id", "study", "condition", "arm", "seed", "order", "model", "quantization", "device")} == {
        "job_id": spec.job_id, "study": "s1", "condition": "B", "arm": "B", "seed": 1, "order": ORDER,
        "model": "tiny", "quantization": "nf4", "device": "cpu",
    }
    stages = metrics["stages"]
    assert [(s["stage"], s["trained_block"]) for s in stages] == [(0, None), (1, ORDER[0]), (2, ORDER[1])]
    assert stages[0]["train_loss"] is None and all(s["train_loss"] > 0 for s in stages[1:])
    for s in stages:
        assert set(s["per_block"]) == ALL_BLOCKS  # every block evaluated at every stage
        for block in s["per_block"].values():
            assert block["n"] == 2
            assert set(block) == {"n", "exact", "name", "name_excl_toolsearcher", "parse_fail", "arg_f1", "errors"}
    assert metrics["final"]["per_block"] == stages[-1]["per_block"]
    assert metrics["final"]["exact"] == pytest.approx(
        sum(b["exact"] for b in stages[-1]["per_block"].values()) / 4
    )
    res = metrics["resources"]
    assert res["peak_memory_bytes"] > 10**7 and res["train_tokens_per_s"] > 0 and res["eval_examples_per_s"] > 0
    from transformers import AutoModelForCausalLM

    from trajhpc.models import resolve_model

    unquantized = AutoModelForCausalLM.from_pretrained(str(resolve_model("tiny"))).num_parameters()
    assert res["params_base"] == unquantized  # 4-bit weights counted as the matrices they stand for
    # LoRA r=4 on q,k,v,o,gate,up,down of 2 layers (hidden 64, kv 32, MLP 128): r x (in + out) each.
    per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert res["params_trainable"] == 2 * per_layer
    prov = metrics["provenance"]
    assert prov["container_image"] == CONTEXT["container_image"]
    assert prov["container_digest"] == CONTEXT["container_digest"]
    assert prov["slurm_job_id"] == "77_3" and prov["slurm_array_task_id"] == "3"
    assert prov["versions"]["torch"] and prov["versions"]["peft"] and prov["hostname"]
    assert prov["started"] <= prov["ended"]

    for k in range(3):
        rows = [json.loads(line) for line in (done_job / "predictions" / f"stage-{k}.jsonl").read_text().splitlines()]
        assert len(rows) == 8  # 4 blocks x 2 held-out examples
        assert Counter(row["block"] for row in rows) == {b: 2 for b in ALL_BLOCKS}
        for row in rows:
            assert len(row["prompt_hash"]) == 12 and row["gold"].startswith("API-Request: [")
            assert {"dialogue_key", "step", "prediction", "exact", "name", "error", "arg_precision", "arg_recall"} <= set(row)

    ckpt = done_job / "checkpoint"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "optimizer.pt",
                 "scheduler.pt", "rng.pt", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert read(ckpt, "trainer_state.json")["stage"] == 2


def test_token_matched_arm_reaches_its_budget_within_one_batch(tmp_path, done_job):
    """A@B counts total tokens: A's prompts are shorter, so it needs more examples (extra passes)."""
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.study import load_study_data
    from trajhpc.models import resolve_model

    spec = spec_of(condition="A", token_budget={"match": "B", "count": "total"})
    assert spec.arm == "A@B"
    run_job(spec, tmp_path / "a")
    matched = read(done_job, "tokens.json")["stages"]  # only the test looks at the B job: the arm computed its own
    tokens = read(tmp_path / "a", "tokens.json")
    assert tokens["arm"] == "A@B"
    assert tokens["budget"]["match"] == "B" and tokens["budget"]["count"] == "total"
    assert tokens["budget"]["budget"] == sum(t["total_tokens"] for t in matched)
    assert tokens["budget"]["consumed"] == sum(t["total_tokens"] for t in tokens["stages"])

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny")))
    data = load_study_data(spec.data)
    cum_a = cum_b = 0
    for k, block in enumerate(ORDER, start=1):
        longest = max(len(e.input_ids) for e in tokenize_examples(tokenizer, data.train[block], "A", max_seq_len=384))
        cum_a += tokens["stages"][k]["total_tokens"]
        cum_b += matched[k]["total_tokens"]
        assert cum_b <= cum_a < cum_b + 4 * longest  # reached, overshooting by less than one batch
        assert tokens["stages"][k]["examples"] > matched[k]["examples"]
    assert any(t["passes"] > 1 for t in tokens["stages"])
    assert read(tmp_path / "a", "metrics.json")["arm"] == "A@B"


def test_a_directory_holding_another_spec_is_refused(tmp_path):
    other = spec_of(seed=99)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "spec.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(TrajhpcError) as err:
        run_job(spec_of(), job_dir)
    assert other.job_id in str(err.value) and spec_of().job_id in str(err.value)
    assert json.loads((job_dir / "spec.json").read_text()) == other.to_dict()
    assert sorted(p.name for p in job_dir.iterdir()) == ["spec.json"]


def test_unknown_block_fails_before_the_model_loads_and_marks_the_job_failed(tmp_path, monkeypatch):
    import trajhpc.train

    monkeypatch.setattr(trajhpc.train, "load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(TrajhpcError, match=r"order: unknown block\(s\) \['nope'\].*care-appointments"):
        run_job(spec_of(order=["nope"]), tmp_path / "job")
    state = read(tmp_path / "job", "state.json")
    assert state["state"] == "failed" and "unknown block" in state["error"] and "\n" not in state["error"]


def test_a_complete_job_dir_resumes_through_jobtask_and_the_command(tmp_path, monkeypatch, done_job):
    metrics = read(done_job, "metrics.json")
    assert JobTask()(spec_of().to_dict(), str(done_job)) == metrics
    # The CLI's default job directory is jobs/<job id> under the working directory.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(done_job, tmp_path / "jobs" / spec_of().job_id)
    console = Console(record=True, width=200)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(BASE))
    assert run_job_command(console, spec_file, None) == metrics
    assert f"job {spec_of().job_id} done" in console.export_text()


def test_jobtask_checkpoint_requeues_the_same_call():
    task = JobTask()
    args = (spec_of().to_dict(), "/runs/s1/abc", "s1", CONTEXT)
    delayed = task.checkpoint(*args)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is task and delayed.args == args
    assert isinstance(cloudpickle.loads(cloudpickle.dumps(delayed)).function, JobTask)


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"condition": "B", "order": ["care-appointments"], "train": {"batch_size": 0}}', "train.batch_size"),
        ('{"condition": "B", "order": ["care-appointments"],\n "seed": }', "bad.json:2"),
        ('{"order": ["care-appointments"]}', "condition"),
        ('{"condition": "B", "order": ["care-appointments", "nope"]}', "order: unknown block(s) ['nope']"),
    ],
)
def test_bad_spec_file_exits_2_with_one_line(tmp_path, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "run-job", str(bad), "--job-dir", str(tmp_path / "job")],
        capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_final_is_the_mean_over_blocks_skipping_missing_values():
    per_block = {
        "x": {"exact": 0.5, "name": 1.0, "name_excl_toolsearcher": None, "parse_fail": 0.0, "arg_f1": 0.5},
        "y": {"exact": 0.0, "name": 0.5, "name_excl_toolsearcher": 0.25, "parse_fail": 0.5, "arg_f1": None},
    }
    assert final_summary(per_block) == {
        "exact": 0.25, "name": 0.75, "name_excl_toolsearcher": 0.25, "parse_fail": 0.25, "arg_f1": 0.5,
        "per_block": per_block,
    }


def test_provenance_prefers_the_launcher_context_and_reads_slurm_ids():
    env = {"TRAJHPC_CONTAINER_IMAGE": "/env.sif", "TRAJHPC_CONTAINER_DIGEST": "sha256:env", "SLURM_JOB_ID": "12"}
    assert provenance.slurm_job_id(env) == "12"
    assert provenance.slurm_job_id({"SLURM_JOB_ID": "80", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}) == "77_3"
    assert provenance.slurm_job_id({}) is None
    from_env = provenance.collect(None, env)
    assert (from_env["container_image"], from_env["container_digest"]) == ("/env.sif", "sha256:env")
    from_context = provenance.collect({**CONTEXT, "partition": "gpu"}, env)
    assert from_context["container_image"] == CONTEXT["container_image"]
    assert from_context["context"] == {"partition": "gpu"}
