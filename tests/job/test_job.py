"""One job end to end: the job directory contract, token-matched arms, refusals, clear errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cloudpickle
import pytest
import submitit
from conftest import FINISHED_CONTEXT, FINISHED_SPEC
from rich.console import Console

from trajhpc.core import provenance
from trajhpc.core.errors import TrajhpcError
from trajhpc.job.run import JobTask, final_summary, run_job, run_job_command
from trajhpc.spec import JobSpec

ORDER = FINISHED_SPEC["order"]
ALL_BLOCKS = {"care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other"}
BASE = FINISHED_SPEC
CONTEXT = FINISHED_CONTEXT


def spec_of(**changes) -> JobSpec:
    return JobSpec.model_validate(BASE | changes)


def read(job_dir: Path, name: str):
    return json.loads((job_dir / name).read_text())


LOGS: dict[str, str] = {}  # console output of the module's jobs


@pytest.fixture
def done_job(finished_job) -> Path:
    """The session's finished condition-B job (conftest), run as Slurm array task 77_3 with a container context."""
    LOGS["done_job"] = finished_job.console
    return finished_job.job_dir


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
    assert zero == {"stage": 0, "block": None, "steps": 0, "examples": 0, "prompt_tokens": 0, "supervised_tokens": 0,
                    "total_tokens": 0, "padded_tokens": 0, "passes": 0, "truncated_examples": 0, "cut_examples": 0}
    assert [t["block"] for t in trained] == ORDER
    for t in trained:
        assert t["examples"] == 8 and t["passes"] == 1 and t["steps"] == 2  # 2 steps x batch 4 of 12 examples
        assert t["prompt_tokens"] + t["supervised_tokens"] == t["total_tokens"] <= t["padded_tokens"]
        assert "budget_cumulative" not in t  # no token budget

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
        # max_new_tokens 4: no held-out gold call fits, each block's 2 examples are counted
        assert s["eval_truncated_gold"] == {b: 2 for b in ALL_BLOCKS}
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

    from trajhpc.job.models import resolve_model

    unquantized = AutoModelForCausalLM.from_pretrained(str(resolve_model("tiny"))).num_parameters()
    assert res["params_base"] == unquantized  # 4-bit weights counted as the matrices they stand for
    # LoRA r=4 on q,k,v,o,gate,up,down of 2 layers (hidden 64, kv 32, MLP 128): r x (in + out) each.
    per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert res["params_trainable"] == 2 * per_layer
    assert res["gradient_checkpointing"] is False  # the spec's default, recorded as decided
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
        # Each row names its record (source file#index): unique, unlike block|dialogue_key|step.
        assert len({row["item"] for row in rows}) == 8
        assert all(re.fullmatch(r"[^#]+\.jsonl?#\d+", row["item"]) for row in rows)
        for row in rows:
            assert len(row["prompt_hash"]) == 12 and row["gold"].startswith("API-Request: [")
            assert {"item", "dialogue_key", "step", "prediction", "exact", "name", "error", "arg_precision", "arg_recall"} <= set(row)
            # Diagnostics of what the prompt carries (condition B on lv3: the gold name often is).
            assert row["target_kind"] in ("toolsearcher", "tool")
            assert isinstance(row["gold_name_in_prompt"], bool) and isinstance(row["gold_values_in_prompt"], bool)
            assert row["target_kind"] == ("toolsearcher" if "[ToolSearcher(" in row["gold"] else "tool")

    ckpt = done_job / "checkpoint"
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "optimizer.pt",
                 "scheduler.pt", "rng.pt", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    assert read(ckpt, "trainer_state.json")["stage"] == 2


def test_train_log_has_one_line_per_optimizer_step(done_job):
    """train_log.jsonl: the documented keys in order, steps 1-based per stage, tokens = the stage's supervised tokens."""
    lines = (done_job / "train_log.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [list(e) for e in entries] == [["stage", "step", "loss", "lr", "tokens", "tokens_per_s", "examples"]] * 4
    assert [(e["stage"], e["step"]) for e in entries] == [(1, 1), (1, 2), (2, 1), (2, 2)]  # max_steps 2 per block
    tokens = read(done_job, "tokens.json")["stages"]
    for stage in (1, 2):
        assert sum(e["tokens"] for e in entries if e["stage"] == stage) == tokens[stage]["supervised_tokens"]
    losses = [s["train_loss"] for s in read(done_job, "metrics.json")["stages"][1:]]
    for stage, loss in zip((1, 2), losses):  # the stage's loss is the token-weighted mean of its steps'
        steps = [e for e in entries if e["stage"] == stage]
        assert sum(e["loss"] * e["tokens"] for e in steps) / sum(e["tokens"] for e in steps) == pytest.approx(loss)
    assert all(isinstance(e["loss"], float) and e["lr"] >= 0 and e["tokens_per_s"] > 0 for e in entries)
    assert read(done_job, "state.json")["activity"] is None  # said only while running


def test_job_logs_keep_real_warnings_and_drop_library_noise():
    """bitsandbytes' optional-kernel warning and transformers' checkpointing FutureWarnings (raised inside peft) are
    filtered by logger/module and message; other warnings of the same loggers still show."""
    import logging
    import warnings

    from trajhpc.job import logfilters

    logfilters.install()
    logfilters.install()  # idempotent
    bnb = logging.getLogger(logfilters.BNB_LOGGER)
    assert len(bnb.filters) == 1
    record = lambda msg: logging.LogRecord(bnb.name, logging.WARNING, __file__, 1, msg, ("x",), None)  # noqa: E731
    assert not bnb.filters[0].filter(record(logfilters.BNB_KERNELS + ": %s. Please make sure you already `pip install kernels`"))
    assert bnb.filters[0].filter(record("Failed to load the CPU backend: %s"))
    with warnings.catch_warnings(record=True) as caught:
        logfilters.install()  # inside: catch_warnings restores the filters on exit
        for module, text in [
            ("transformers.modeling_utils", "`is_gradient_checkpointing` is deprecated and will be removed in v6."),
            ("transformers.modeling_utils", "`gradient_checkpointing_enable` is deprecated and will be removed in v6."),
            ("transformers.modeling_utils", "`use_cache=True` is incompatible with gradient checkpointing."),
            ("peft.peft_model", "`is_gradient_checkpointing` is deprecated (another library's own)."),
        ]:
            warnings.warn_explicit(text, FutureWarning, "x.py", 1, module=module, registry={})
    assert [str(w.message) for w in caught] == [
        "`use_cache=True` is incompatible with gradient checkpointing.",
        "`is_gradient_checkpointing` is deprecated (another library's own).",
    ]


def test_token_matched_arm_reaches_its_budget_within_one_step(tmp_path, done_job):
    """A@B counts total tokens: A's prompts are shorter, so it needs more examples (extra passes over
    a block are exercised by tests/job/test_resume.py's token-matched arm)."""
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.models import resolve_model

    spec = spec_of(condition="A", token_budget={"match": "B", "count": "total"})
    assert spec.arm == "A@B"
    run_job(spec, tmp_path / "a")
    matched = read(done_job, "tokens.json")["stages"]  # only the test looks at the B job: the arm computed its own
    tokens = read(tmp_path / "a", "tokens.json")
    assert tokens["arm"] == "A@B"
    assert tokens["budget"]["match"] == "B" and tokens["budget"]["count"] == "total"
    assert tokens["budget"]["budget"] == sum(t["total_tokens"] for t in matched)
    assert tokens["budget"]["consumed"] == sum(t["total_tokens"] for t in tokens["stages"])
    # the cumulative budget of every stage, for auditing per-stage matching
    assert [t["budget_cumulative"] for t in tokens["stages"]] == [
        sum(t["total_tokens"] for t in matched[: k + 1]) for k in range(len(ORDER) + 1)
    ]

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny")))
    data = load_study_data(spec.data)
    cum_a = cum_b = 0
    for k, block in enumerate(ORDER, start=1):
        longest = max(len(e.input_ids) for e in tokenize_examples(tokenizer, data.train[block], "A", max_seq_len=384))
        cum_a += tokens["stages"][k]["total_tokens"]
        cum_b += matched[k]["total_tokens"]
        assert cum_b <= cum_a < cum_b + 4 * longest  # reached, overshooting by less than one step of 4
    # Over the job (a stage's overshoot is what the next stage's budget lacks): more examples than B.
    assert sum(t["examples"] for t in tokens["stages"]) > sum(t["examples"] for t in matched)
    assert read(tmp_path / "a", "metrics.json")["arm"] == "A@B"
    # The same step sequence as B's, continued: B's steps are the first of A@B's in every stage.
    logs = [[json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()] for d in (done_job, tmp_path / "a")]
    for k in (1, 2):
        b_steps, a_steps = ([e["examples"] for e in log if e["stage"] == k] for log in logs)
        assert len(a_steps) >= len(b_steps) and a_steps[: len(b_steps)] == b_steps


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
    import trajhpc.job.train

    monkeypatch.setattr(trajhpc.job.train, "load_base_model", lambda *a, **k: pytest.fail("model loaded"))
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
        ('{"condition": "B", "order": ["care-appointments", "nope"], "recipe": 2}', "order: unknown block(s) ['nope']"),
        ('{"condition": "B", "order": ["care-appointments"]}', "bad.json: recipe: job "),
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


# ---------------------------------------------------------------- review fixes


def test_truncated_examples_are_counted_per_stage(done_job):
    """B at max_seq_len 384 drops the oldest turns of some examples; tokens.json counts the consumed ones."""
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.batching import spec_stage_batches
    from trajhpc.job.models import resolve_model

    spec = spec_of()
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny")))
    data = load_study_data(spec.data)
    stages = read(done_job, "tokens.json")["stages"]
    for k, block in enumerate(ORDER, start=1):
        examples = tokenize_examples(tokenizer, data.train[block], "B", max_seq_len=384)
        plan = spec_stage_batches(spec.train, [e.record.uid for e in examples], [len(e.input_ids) for e in examples],
                                  seed=1, stage=k)
        assert stages[k]["truncated_examples"] == sum(examples[i].is_truncated for i in plan.consumed())
    assert any(t["truncated_examples"] > 0 for t in stages)


def test_heldout_prompts_are_shortened_by_the_training_rule_counted_and_warned_about_once(done_job):
    """Held-out prompts keep max_seq_len - max_new_tokens tokens (384 - 4), shortened as training examples are;
    tokens.json counts them (``evaluation``) and the job log warns once."""
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.evaluate import prompt_hash
    from trajhpc.job.models import resolve_model

    spec = spec_of()
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny")))
    data = load_study_data(spec.data)
    records = [r for block in data.blocks for r in data.heldout[block]]
    examples = tokenize_examples(tokenizer, records, "B", max_seq_len=384, reserve=4)
    assert all(len(e.prompt_ids) <= 380 for e in examples)
    evaluation = read(done_job, "tokens.json")["evaluation"]
    assert evaluation == {"examples": len(records), "truncated_examples": sum(e.is_truncated for e in examples),
                          "cut_examples": sum(e.cut_tokens > 0 for e in examples), "prompt_room": 380}
    rows = [json.loads(line) for line in (done_job / "predictions" / "stage-2.jsonl").read_text().splitlines()]
    assert [r["prompt_hash"] for r in rows] == [prompt_hash(e.prompt_ids) for e in examples]
    warnings = [line for line in LOGS["done_job"].splitlines() if "are shortened" in line]
    assert len(warnings) == 1, warnings
    assert "prompts longer than train.max_seq_len=384 are shortened: " in warnings[0]
    assert f"{evaluation['truncated_examples']} of {len(records)} held-out prompts" in warnings[0]


def test_heldout_prompts_that_do_not_fit_lose_their_oldest_turns_and_are_warned_about(tiny):
    """recipe.prepare's held-out items at a max_seq_len most B prompts exceed: each keeps max_seq_len - max_new_tokens."""
    import io

    from rich.console import Console

    from trajhpc.data.splits import load_study_data
    from trajhpc.job import recipe

    _, tokenizer = tiny
    spec = spec_of().model_copy(update={"train": spec_of().train.model_copy(update={"max_seq_len": 300}),
                                        "eval": spec_of().eval.model_copy(update={"max_new_tokens": 40})})
    data = load_study_data(spec.data)
    items = recipe._heldout(spec, tokenizer, data, spec.condition, spec.condition_k)
    assert all(len(it.prompt_ids) <= 260 for it in items)
    shortened = [it for it in items if it.truncated or it.cut_tokens]
    assert 0 < len(shortened) < len(items)
    out = io.StringIO()
    counts = recipe._warn_truncation(spec, {}, items, Console(file=out, width=400))
    assert counts == {"examples": len(items), "truncated_examples": len(shortened),
                      "cut_examples": sum(it.cut_tokens > 0 for it in items), "prompt_room": 260}
    assert out.getvalue().count("warning: prompts longer than train.max_seq_len=300 are shortened: 0 of 0 training "
                                f"examples and {len(shortened)} of {len(items)} held-out prompts") == 1
    quiet = io.StringIO()
    recipe._warn_truncation(spec, {}, [it for it in items if it not in shortened], Console(file=quiet))
    assert quiet.getvalue() == ""


def test_gold_calls_longer_than_max_new_tokens_are_warned_about(done_job):
    log = LOGS["done_job"]
    assert "warning" in log and "8 of 8 held-out gold calls are longer than eval.max_new_tokens=4" in log


def test_lv3_gold_calls_fit_the_default_max_new_tokens():
    """The longest lv3 held-out gold calls need more than 64 tokens (the old default), none more than 160."""
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.evaluate import gold_token_count
    from trajhpc.job.models import resolve_model
    from trajhpc.spec import DataSpec, EvalSpec

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny")))
    data = load_study_data(DataSpec())
    special = set(tokenizer.all_special_ids)
    lengths = []
    for block in data.blocks:
        for ex in tokenize_examples(tokenizer, data.heldout[block], "A", max_seq_len=4096):
            lengths.append(gold_token_count(ex.input_ids[len(ex.prompt_ids):], special))
            assert tokenizer.decode(ex.input_ids[len(ex.prompt_ids):][: lengths[-1]]) == ex.target
    assert len(lengths) == 208  # the held-out lv3 records
    assert sum(n > 64 for n in lengths) == 3 and max(lengths) <= EvalSpec().max_new_tokens


def test_heldout_dialogues_in_the_pretraining_text_are_warned_about(tmp_path, done_job):
    """tiny pre-trains on the level-1/2 files: a study that holds out dialogues of them
    evaluates on some the model has read."""
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.models import resolve_model
    from trajhpc.job.recipe import _check_pretraining

    assert read(done_job, "metrics.json")["provenance"]["heldout_dialogues_in_pretraining"] == 0
    assert "pre-training text" not in LOGS["done_job"]
    spec = spec_of(data={"files": ["test-data/level-1-api.json"], "blocks": {"kind": "scenario"}})
    console = Console(record=True, width=300)
    overlap = _check_pretraining(spec, resolve_model("tiny"), load_study_data(spec.data), console)
    assert overlap > 0
    log = console.export_text()
    assert f"warning: {overlap} of the " in log and "pre-training text of tiny" in log


def test_supervised_matched_arm_warns_that_it_equals_its_own_condition(tmp_path):
    """Supervised tokens are the gold calls, equal under A and B: A@B (supervised) is just A."""
    spec = spec_of(
        condition="A", order=["care-appointments"], token_budget={"match": "B", "count": "supervised"},
        data={"max_train_per_block": 4, "max_heldout_per_block": 1},
        train={"epochs": 1, "batch_size": 4, "max_seq_len": 384}, eval={"batch_size": 8, "max_new_tokens": 2},
    )
    console = Console(record=True, width=300)
    run_job(spec, tmp_path / "job", console=console)
    log = console.export_text()
    assert "warning" in log and "A@B" in log and "count: total" in log
    tokens = read(tmp_path / "job", "tokens.json")
    assert tokens["budget"]["budget"] == tokens["budget"]["consumed"] == tokens["stages"][1]["supervised_tokens"]
    assert tokens["stages"][1]["passes"] == 1


def test_complete_job_still_marked_running_is_marked_done(tmp_path, monkeypatch, done_job):
    """Killed between the final metrics.json and the state.json 'done' write: the next start repairs state.json."""
    import trajhpc.job.train

    job_dir = tmp_path / "job"
    shutil.copytree(done_job, job_dir)
    state = read(job_dir, "state.json")
    running = state | {"state": "running", "ended": None}
    (job_dir / "state.json").write_text(json.dumps(running))
    monkeypatch.setattr(trajhpc.job.train, "load_base_model", lambda *a, **k: pytest.fail("model loaded"))
    assert run_job(spec_of(), job_dir) == read(done_job, "metrics.json")
    repaired = read(job_dir, "state.json")
    assert repaired["state"] == "done" and repaired["stage"] == 2 and repaired["n_stages"] == 2
    assert repaired["ended"] and repaired["started"] == state["started"] and repaired["error"] is None
    (job_dir / "state.json").unlink()  # lost altogether
    run_job(spec_of(), job_dir)
    assert read(job_dir, "state.json")["state"] == "done"
    before = (job_dir / "state.json").read_bytes()
    run_job(spec_of(), job_dir)  # already done: left as it is
    assert (job_dir / "state.json").read_bytes() == before


# ---------------------------------------------------------------- one process per job directory, Ctrl-C, threads

HOLD = "import sys, time\nfrom pathlib import Path\nfrom trajhpc.core import locks\n" \
    "with locks.exclusive(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(120)\n"


def _holder(lock: Path) -> subprocess.Popen:
    """Another process holding ``lock`` (as a running job holds its directory's)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_job_directory_in_use_is_refused_at_once_and_a_dead_holder_is_taken_over(tmp_path, done_job, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # a Slurm task would wait first
    job_dir = tmp_path / "job"
    shutil.copytree(done_job, job_dir)
    (job_dir / "state.json").unlink()
    holder = _holder(job_dir / ".lock")
    try:
        with pytest.raises(TrajhpcError, match=r"in use by another trajhpc job process \(pid \d+ on .*\); refusing"):
            JobTask()(spec_of().to_dict(), str(job_dir))
        assert not (job_dir / "state.json").exists()  # refused before writing anything
    finally:
        holder.kill()  # SIGKILL: the kernel drops its flock, the lock file stays behind
        holder.wait()
    assert (job_dir / ".lock").exists()
    assert run_job(spec_of(), job_dir) == read(done_job, "metrics.json")  # stale lock taken over
    assert read(job_dir, "state.json")["state"] == "done"
    assert not (job_dir / ".lock").exists()  # released and removed


def _wait_for(predicate, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _state(job_dir: Path) -> str | None:
    try:
        return read(job_dir, "state.json")["state"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_second_run_job_exits_2_and_ctrl_c_exits_130_leaving_the_job_interrupted(tmp_path):
    import signal

    from trajhpc.launch.status import display_state

    spec_file, job_dir = tmp_path / "spec.json", tmp_path / "job"
    spec_file.write_text(json.dumps(BASE | {"train": BASE["train"] | {"max_steps": 50}}))
    command = [sys.executable, "-m", "trajhpc.cli", "run-job", str(spec_file), "--job-dir", str(job_dir)]
    # 0.2 s a step: stage 1 trains for at least 10 s, so the Ctrl-C below lands in training even on a
    # loaded machine, where the job could otherwise finish before this process polls again.
    slow = {**os.environ, "TRAJHPC_FAULT_INJECT": "slow:200"}
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=slow)
    try:
        _wait_for(lambda: _state(job_dir) == "running" or first.poll() is not None)
        before = read(job_dir, "state.json")
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert "in use by another trajhpc job process" in lines[0] and str(job_dir) in lines[0]
        after = read(job_dir, "state.json")  # the loser wrote nothing (the first one may have, since)
        assert after["state"] == "running" and after["started"] == before["started"]
        # Ctrl-C while it trains (stage 0 evaluated: stage 1 runs 50 steps)
        _wait_for(lambda: (job_dir / "predictions" / "stage-0.jsonl").exists() or first.poll() is not None)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    state = read(job_dir, "state.json")
    assert state["state"] == "interrupted" and state["error"] is None and state["ended"]
    assert not (job_dir / ".lock").exists()
    assert display_state(state, False, None)[0] == "interrupted"



# submitit's task process ignores SIGTERM (it waits for its own USR2): run the task as it does.
_AS_SUBMITIT = """
import json, signal, sys
from trajhpc.job.run import JobTask
signal.signal(signal.SIGTERM, lambda signum, frame: print("bypassed", flush=True))
JobTask()(json.loads(open(sys.argv[1]).read()), sys.argv[2])
"""


def test_a_submitit_task_stops_on_sigterm_leaving_the_job_interrupted_and_unlocked(tmp_path):
    """Slurm stops a task with SIGTERM, then SIGKILL: under Docker the SIGKILL reaches only the
    client, and a job that ignored the SIGTERM trained on in its container, holding the lock."""
    import signal
    import time

    spec_file, job_dir = tmp_path / "spec.json", tmp_path / "job"
    spec_file.write_text(json.dumps(BASE | {"train": BASE["train"] | {"max_steps": 50}}))
    slow = {**os.environ, "TRAJHPC_FAULT_INJECT": "slow:200"}
    task = subprocess.Popen([sys.executable, "-c", _AS_SUBMITIT, str(spec_file), str(job_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=slow)
    try:
        _wait_for(lambda: (job_dir / "predictions" / "stage-0.jsonl").exists() or task.poll() is not None)
        sent = time.monotonic()
        task.send_signal(signal.SIGTERM)
        stdout, stderr = task.communicate(timeout=120)
        stopped_s = time.monotonic() - sent
    finally:
        task.kill()
    assert task.returncode == 143, stderr
    assert stopped_s < 15, stopped_s  # well within Slurm's default KillWait (30 s), on a loaded machine too
    assert "bypassed" not in stdout and "Traceback" not in stderr
    assert f"stopped (SIGTERM): {job_dir} is left interrupted" in stdout
    state = read(job_dir, "state.json")
    assert state["state"] == "interrupted" and state["error"] is None and state["stage"] == 0
    assert not (job_dir / ".lock").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process's handler untouched


def test_out_of_time_in_a_task_that_cannot_requeue_stops_it_instead_of_failing(monkeypatch):
    """submitit requeues with scontrol from inside the task: the Docker image has none. The
    checkpoint then stops the job cleanly (interrupted), where the requeue raised FileNotFoundError."""
    from trajhpc.job import stopping

    args = (spec_of().to_dict(), "/runs/s1/abc", "s1", CONTEXT)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(stopping.Stopped, match=r"out of time, not requeued: no Slurm client \(scontrol\)"):
        JobTask().checkpoint(*args)
    assert stopping.requeue_blocked({"SUBMITIT_EXECUTOR": "local", "PATH": "/nonexistent"}) is None
    assert stopping.requeue_blocked({"PATH": "/nonexistent"}) is None  # not under submitit: nothing to requeue
    assert issubclass(stopping.Stopped, KeyboardInterrupt)  # unwinds as Ctrl-C: "interrupted", resumable


def test_a_slurm_task_waits_for_the_attempt_before_it_to_release_the_job(tmp_path, done_job, monkeypatch):
    """A resubmitted task may start while the attempt Slurm just stopped is still ending."""
    import threading

    from trajhpc.job import run as run_module

    job_dir = tmp_path / "job"
    shutil.copytree(done_job, job_dir)
    (job_dir / "state.json").unlink()
    holder = _holder(job_dir / ".lock")
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    monkeypatch.setattr(run_module, "LOCK_WAIT_S", 30.0)
    release = threading.Timer(1.0, holder.kill)
    release.start()
    try:
        assert run_job(spec_of(), job_dir) == read(done_job, "metrics.json")
    finally:
        release.cancel()
        holder.kill()
        holder.wait()
    monkeypatch.setattr(run_module, "LOCK_WAIT_S", 0.5)
    holder = _holder(job_dir / ".lock")
    try:
        with pytest.raises(TrajhpcError, match="in use by another trajhpc job process"):
            run_job(spec_of(), job_dir)
    finally:
        holder.kill()
        holder.wait()


def test_job_threads_follow_the_launcher_then_the_allocation_then_the_affinity():
    from trajhpc.job.run import job_threads

    assert job_threads({"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}, 16) == 3
    assert job_threads({"SLURM_CPUS_PER_TASK": "8"}, 16) == 8
    assert job_threads({}, 16) == 16
    assert job_threads({"OMP_NUM_THREADS": "", "SLURM_CPUS_PER_TASK": "x"}, 0) == 1


def test_run_job_by_hand_sets_the_thread_count(tmp_path, monkeypatch, done_job):
    import torch

    import trajhpc.job.run as job_mod

    monkeypatch.setenv("OMP_NUM_THREADS", "")  # unset, and restored after the test
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    seen = []
    monkeypatch.setattr(job_mod, "run_job", lambda *a, **k: seen.append(torch.get_num_threads()) or
                        read(done_job, "metrics.json"))
    before = torch.get_num_threads()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(BASE))
    try:
        run_job_command(Console(file=open(os.devnull, "w")), spec_file, tmp_path / "job")
        assert seen == [1] and os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_adapter_config_lists_target_modules_sorted(done_job):
    config = read(done_job / "checkpoint" / "adapter", "adapter_config.json")
    assert isinstance(config["target_modules"], list) and config["target_modules"] == sorted(config["target_modules"])


def test_the_job_reads_its_own_files_without_hanging_on_a_fifo_or_dying_on_damage(tmp_path):
    import os

    from trajhpc.core.errors import InputError
    from trajhpc.job.run import read_json

    fifo = tmp_path / "metrics.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_json(fifo)  # returns at once instead of blocking on open()
    deep = tmp_path / "state.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(InputError, match="nested deeper"):
        read_json(deep)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InputError, match="expected a JSON object"):
        read_json(tmp_path / "list.json")
    assert read_json(tmp_path / "missing.json") is None
