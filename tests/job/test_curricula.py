"""Curricula (joint, replay) and the compute control B@A: which examples each stage trains, end to end
on the tiny model, and how aggregate reads them (one training row for joint, BWT not applicable)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import FINISHED_SPEC

from trajhpc.job.curriculum import replay_count, replay_draw, stage_examples
from trajhpc.spec import JobSpec

ORDER = FINISHED_SPEC["order"]  # cost-insurance-other, care-appointments; 12 training examples each


def spec_of(**changes) -> JobSpec:
    return JobSpec.model_validate(FINISHED_SPEC | changes)


def read(job_dir: Path, name: str):
    return json.loads((job_dir / name).read_text())


# ---------------------------------------------------------------- which examples (pure)


@pytest.mark.parametrize(("own", "fraction", "pool", "expected"),
                         [(12, 0.25, 100, 4), (12, 0.5, 100, 12), (12, 0.25, 3, 3), (12, 0.25, 0, 0), (10, 0.1, 50, 1)])
def test_replay_adds_the_share_of_the_stage_it_names(own, fraction, pool, expected):
    # r / (own + r) = fraction: 4 of 16 at 0.25, 12 of 24 at 0.5; never more than the earlier blocks hold
    assert replay_count(own, fraction, pool) == expected


def test_replay_draw_is_deterministic_of_the_stated_size_and_only_from_earlier_blocks():
    blocks = {b: [f"{b}:{i}" for i in range(12)] for b in ("a", "b", "c", "d")}
    spec = JobSpec(condition="B", order=("a", "b", "c", "d"), seed=3, curriculum="replay")
    assert stage_examples(spec, blocks, 1) == blocks["a"]  # nothing before the first block
    for stage, block in enumerate(spec.order, start=1):
        got = stage_examples(spec, blocks, stage)
        assert got == stage_examples(spec, blocks, stage)  # deterministic
        assert got[:12] == blocks[block]
        replayed = got[12:]
        assert len(replayed) == (0 if stage == 1 else 4) and len(set(replayed)) == len(replayed)
        assert {e.split(":")[0] for e in replayed} <= set(spec.order[: stage - 1])
    # the draw depends on seed and stage, not on what the examples are: every arm of a unit replays the same ones
    other_arm = {b: [f"A-prompt {e}" for e in examples] for b, examples in blocks.items()}
    assert [e.removeprefix("A-prompt ") for e in stage_examples(spec, other_arm, 4)] == stage_examples(spec, blocks, 4)
    assert replay_draw(3, 4, [12, 12, 12], 12, 0.25) != replay_draw(4, 4, [12, 12, 12], 12, 0.25)
    assert replay_draw(3, 3, [12, 12], 12, 0.25) != replay_draw(3, 4, [12, 12], 12, 0.25)


def test_joint_trains_every_block_in_one_stage_and_sequential_one_block_a_stage():
    blocks = {"a": [1, 2], "b": [3], "c": [4, 5]}
    joint = JobSpec(condition="B", order=("c", "a", "b"), curriculum="joint")
    assert stage_examples(joint, blocks, 1) == [4, 5, 1, 2, 3]
    with pytest.raises(ValueError, match="a joint job has stages 1..1"):
        stage_examples(joint, blocks, 2)
    sequential = JobSpec(condition="B", order=("c", "a", "b"))
    assert [stage_examples(sequential, blocks, k) for k in (1, 2, 3)] == [[4, 5], [1, 2], [3]]


# ---------------------------------------------------------------- end to end on the tiny model


@pytest.fixture(scope="module")
def study(tmp_path_factory, finished_job) -> Path:
    """Study s1: the session's finished B job beside A, B@A, B+joint and B+replay of the same unit."""
    from trajhpc.job.run import run_job

    folder = tmp_path_factory.mktemp("curricula") / "s1"
    shutil.copytree(finished_job.job_dir, folder / finished_job.spec.job_id)
    for changes in ({"condition": "A"}, {"token_budget": {"match": "A"}}, {"curriculum": "joint"},
                    {"curriculum": "replay"}):
        spec = spec_of(**changes)
        run_job(spec, folder / spec.job_id, study="s1")
    return folder


def test_a_joint_job_trains_once_on_every_block_and_reads_complete(study):
    from trajhpc.jobdir.documents import read_job_docs

    spec = spec_of(curriculum="joint")
    job = study / spec.job_id
    metrics, tokens = read(job, "metrics.json"), read(job, "tokens.json")
    joined = "+".join(ORDER)
    assert metrics["arm"] == "B+joint" and metrics["complete"] is True
    assert [(s["stage"], s["trained_block"]) for s in metrics["stages"]] == [(0, None), (1, joined)]
    assert [(t["stage"], t["block"], t["steps"], t["examples"]) for t in tokens["stages"]] == [
        (0, None, 0, 0), (1, joined, 2, 8)]  # max_steps 2 x batch 4 of the 24 examples of both blocks
    assert read(job, "state.json")["n_stages"] == 1
    assert sorted(p.name for p in (job / "predictions").iterdir()) == ["stage-0.jsonl", "stage-1.jsonl"]
    read_spec, _, _ = read_job_docs(job)
    assert read_spec == spec


def test_a_replay_stage_adds_earlier_examples_the_same_for_every_arm(study):
    from rich.console import Console

    from trajhpc.job import recipe

    spec = spec_of(curriculum="replay")
    tokens = read(study / spec.job_id, "tokens.json")
    assert tokens["arm"] == "B+replay" and [t["steps"] for t in tokens["stages"]] == [0, 2, 2]
    prep = recipe.prepare(spec, Console(quiet=True))
    second = stage_examples(spec, prep.train_examples, 2)
    first_block = prep.train_examples[ORDER[0]]
    assert len(second) == 12 + 4 and second[:12] == list(prep.train_examples[ORDER[1]])
    assert all(any(e is f for f in first_block) for e in second[12:])
    a_prep = recipe.prepare(spec_of(curriculum="replay", condition="A"), Console(quiet=True))
    a_second = stage_examples(a_prep.spec, a_prep.train_examples, 2)
    picked = [[i for i, f in enumerate(first_block) if f is e][0] for e in second[12:]]
    assert [[i for i, f in enumerate(a_prep.train_examples[ORDER[0]]) if f is e][0] for e in a_second[12:]] == picked


def test_b_at_a_stops_at_as_budget_on_fewer_examples_without_repeating(study):
    b_at_a, b, a = (read(study / spec_of(**c).job_id, "tokens.json")
                    for c in ({"token_budget": {"match": "A"}}, {}, {"condition": "A"}))
    assert b_at_a["arm"] == "B@A"
    assert [t["budget_cumulative"] for t in b_at_a["stages"]][1:] == [
        sum(t["total_tokens"] for t in a["stages"][: k + 1]) for k in (1, 2)]
    assert all(t["passes"] <= 1 for t in b_at_a["stages"])  # no example twice
    # A budget stops at the step that reaches it: with 2 steps a stage, B (about 1.4x A's tokens a
    # step) reaches A's budget only at its last step, so B@A takes B's steps here; fewer steps on a
    # longer stage: tests/job/test_steps.py.
    assert sum(t["examples"] for t in b_at_a["stages"]) <= sum(t["examples"] for t in b["stages"])
    assert all(x["steps"] <= y["steps"] for x, y in zip(b_at_a["stages"], b["stages"]))


def test_aggregate_reads_the_curricula_and_names_each_controls_confound(study):
    from trajhpc.results import aggregate as agg

    (result,) = agg.aggregate([study], resamples=200)
    assert set(result.arms) == {"A", "B", "B@A", "B+joint", "B+replay"}
    assert result.jobs["status"].to_list() == ["ok"] * 5
    units = {r["arm"]: r for r in result.units.to_dicts()}
    assert units["B+joint"]["n_stages"] == 1
    for metric in ("bwt_exact", "forgetting_chaudhry_exact", "forgetting_since_learned_exact", "fwt_exact"):
        assert units["B+joint"][metric] is None  # not applicable, never 0
    assert units["B+replay"]["n_stages"] == 2
    rows = result.rmatrix.filter(pl.col("arm") == "B+joint")
    assert sorted(set(rows["stage"])) == [0, 1] and set(rows.filter(pl.col("stage") == 1)["block_pos"]) == {0, 1}
    compute = {(r["arm"], r["stage"]): r for r in result.compute.to_dicts()}
    assert sorted(t for a, t in compute if a == "B+joint") == [0, 1]
    assert compute[("B+joint", 1)]["steps"] == 2 and compute[("B", 2)]["steps"] == 4
    assert compute[("B@A", 2)]["examples"] <= compute[("B", 2)]["examples"]  # equal at 2 steps a stage (above)
    assert compute[("B", 2)]["flops"] > compute[("B", 1)]["flops"] > 0
    assert result.paired.filter((pl.col("metric") == "exact") & pl.col("arm").is_in(["B+joint", "B+replay"])).height
    out = agg.write_outputs(result, plots=False)
    report = (out / "report.md").read_text()
    # Read from the counts: at 2 steps a stage B@A saw B's examples (see above), and the report says so.
    assert "- B@A (B trained to A's token budget at each stage): confound: none in the counts" in report
    assert "- B − A (plain): the same examples in the same optimizer steps; confound: B's longer prompts" in report
    joint_row = next(line for line in report.splitlines() if line.startswith("| B+joint | n/a"))
    assert joint_row.count("n/a") == 8 and "n/a: B+joint trained every block in one stage" in report
    from rich.console import Console

    from trajhpc.results.report import print_summary

    console = Console(record=True, width=200)
    print_summary(console, result)
    joint_line = next(line for line in console.export_text().splitlines() if "B+joint" in line)
    assert joint_line.rstrip(" │").endswith("n/a")  # BWT exact, the last column


def test_cost_estimates_count_joint_and_replay_examples(study):
    from trajhpc.launch.cost import WorkPlanner

    planner = WorkPlanner()
    for changes in ({"curriculum": "joint"}, {"curriculum": "replay"}, {}):
        spec = spec_of(**changes)
        work = planner.work(spec)
        tokens, metrics = read(study / spec.job_id, "tokens.json"), read(study / spec.job_id, "metrics.json")
        assert work.train_tokens == sum(t["total_tokens"] for t in tokens["stages"]) > 0
        assert work.eval_prompts == sum(b["n"] for s in metrics["stages"] for b in s["per_block"].values())
