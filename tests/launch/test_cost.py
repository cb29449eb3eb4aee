"""Grid cost estimates: rates files, planned work per job, and `submit --dry-run --rates`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import REPO
from rich.console import Console

from trajhpc.core.errors import InputError
from trajhpc.job.run import run_job
from trajhpc.launch.cost import JobWork, Rates, WorkPlanner, format_estimate, job_seconds, load_rates
from trajhpc.launch.submit import submit_command
from trajhpc.spec import JobSpec, TokenBudget

RATES = {"schema": "trajhpc.rates/1", "device": "NVIDIA H200", "train_tokens_per_s": 10000.0,
         "eval_prompts_per_s": 20.0, "setup_s": 30.0}

SPEC = JobSpec.model_validate(
    {
        "condition": "B",
        "order": ["medication-treatment", "care-appointments"],
        "seed": 1,
        "data": {"max_train_per_block": 10, "max_heldout_per_block": 2},
        "train": {"epochs": 1.5, "batch_size": 4, "max_seq_len": 384},
        "lora": {"r": 2, "alpha": 4},
        "eval": {"batch_size": 8, "max_new_tokens": 4},
    }
)


def write_rates(tmp_path: Path, **patch) -> Path:
    path = tmp_path / "rates.json"
    path.write_text(json.dumps({**RATES, **patch}))
    return path


def test_rates_file_round_trips(tmp_path):
    rates = load_rates(write_rates(tmp_path))
    assert rates.train_tokens_per_s == 10000.0 and rates.setup_s == 30.0


@pytest.mark.parametrize(
    "content, field, message",
    [
        ("{", None, "not valid JSON"),
        (json.dumps({**RATES, "train_tokens_per_s": 0}), "train_tokens_per_s", "greater than 0"),
        (json.dumps({k: v for k, v in RATES.items() if k != "device"}), "device", "Field required"),
        (json.dumps({**RATES, "schema": "trajhpc.rates/9"}), "schema", "trajhpc.rates/1"),
        (json.dumps({**RATES, "tok_s": 1}), "tok_s", "Extra inputs"),
    ],
)
def test_bad_rates_file_names_file_and_field(tmp_path, content, field, message):
    path = tmp_path / "rates.json"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        load_rates(path)
    assert str(path) in str(err.value) and message in str(err.value)
    assert err.value.field == field


def test_missing_rates_file_is_named(tmp_path):
    with pytest.raises(InputError, match="rates file not found"):
        load_rates(tmp_path / "nope.json")


def test_job_seconds_adds_setup_train_and_eval():
    rates = Rates.model_validate(RATES)
    assert job_seconds(JobWork(train_tokens=50_000, eval_prompts=100), rates) == pytest.approx(30 + 5 + 5)


def test_estimate_line_counts_gpu_hours_per_gpu_of_each_job():
    rates = Rates.model_validate(RATES)
    works = [JobWork(train_tokens=3_600_000 - 300_000, eval_prompts=0)] * 2  # (330 + 30) s each
    assert "0.20 GPU-hours on NVIDIA H200" in format_estimate(works, rates, 1, "the grid")
    assert "0.40 GPU-hours" in format_estimate(works, rates, 2, "the grid")


def test_planned_work_equals_what_the_job_trains_and_evaluates(tmp_path):
    work = WorkPlanner().work(SPEC)
    run_job(SPEC, tmp_path / "job", study="cost-test")
    tokens = json.loads((tmp_path / "job" / "tokens.json").read_text())
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert work.train_tokens == sum(s["total_tokens"] for s in tokens["stages"]) > 0
    assert work.eval_prompts == sum(b["n"] for s in metrics["stages"] for b in s["per_block"].values())


def test_budget_arm_is_planned_as_the_job_plans_it(tmp_path):
    """A@B: the job's own plan (stops at the first step reaching B's count), not a proportion."""
    planner = WorkPlanner()
    a, b = planner.work(SPEC.model_copy(update={"condition": "A"})), planner.work(SPEC)
    spec = SPEC.model_copy(update={"condition": "A", "token_budget": TokenBudget(match="B")})
    matched = planner.work(spec)
    assert a.train_tokens < b.train_tokens <= matched.train_tokens < b.train_tokens + a.train_tokens
    run_job(spec, tmp_path / "job", study="cost-test")
    tokens = json.loads((tmp_path / "job" / "tokens.json").read_text())
    assert matched.train_tokens == sum(s["total_tokens"] for s in tokens["stages"])


def test_dry_run_with_rates_prints_the_estimated_gpu_hours(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=200)
    submit_command(
        console, REPO / "manifests" / "smoke.yaml", dry_run=True, run_root=tmp_path, executor="local",
        wait=False, rates=write_rates(tmp_path),
    )
    text = out.getvalue()
    assert "estimated cost of the grid (8 jobs):" in text
    assert "GPU-hours on NVIDIA H200" in text
    assert not list(tmp_path.glob("smoke/*/spec.json"))  # still a dry run


def test_dry_run_without_rates_prints_no_estimate(tmp_path):
    out = io.StringIO()
    submit_command(
        Console(file=out, width=200), REPO / "manifests" / "smoke.yaml", dry_run=True, run_root=tmp_path,
        executor="local", wait=False,
    )
    assert "estimated cost" not in out.getvalue()
