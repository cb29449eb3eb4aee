"""A real tiny job trained under A and also evaluated under B (eval.also_under), killed and resumed;
then aggregated beside the session's B-trained job of the same unit: the train x eval table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import FINISHED_SPEC
from rich.console import Console

from trajhpc.job.run import FAULT_ENV, InjectedFault, run_job
from trajhpc.spec import JobSpec

# The session's finished B job (conftest) with condition A, also scored under B: same seed,
# order, data and settings, so the two are one (seed, order) unit of arms A and B.
SPEC = {**FINISHED_SPEC, "condition": "A", "eval": {**FINISHED_SPEC["eval"], "also_under": ["B"]}}


@pytest.fixture(scope="module")
def a_job(tmp_path_factory) -> tuple[JobSpec, Path, str]:
    """The A job, killed after stage 1's outputs and run again: (spec, job dir, the resumed attempt's log)."""
    spec = JobSpec.model_validate(SPEC)
    job_dir = tmp_path_factory.mktemp("evalx") / "s1" / spec.job_id
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAULT_ENV, "after-stage:1")
        with pytest.raises(InjectedFault):
            run_job(spec, job_dir, study="s1", console=Console(record=True, width=300))
    console = Console(record=True, width=300)
    run_job(spec, job_dir, study="s1", console=console)
    return spec, job_dir, console.export_text()


def _rows(job_dir: Path, stage: int) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "predictions" / f"stage-{stage}.jsonl").read_text().splitlines()]


def test_every_stage_scores_the_same_items_again_under_b_and_resuming_scores_them_once(a_job):
    spec, job_dir, log = a_job
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["complete"] and metrics["provenance"]["resumed_after_stage"] == 1
    assert "again under B" in log
    for stage in metrics["stages"]:
        rows = _rows(job_dir, stage["stage"])
        own, under_b = rows[: len(rows) // 2], rows[len(rows) // 2 :]
        assert len(rows) == 2 * sum(b["n"] for b in stage["per_block"].values())  # once each, not twice
        assert all("eval_condition" not in r for r in own) and {r["eval_condition"] for r in under_b} == {"B"}
        assert [r["item"] for r in own] == [r["item"] for r in under_b]  # same items, same order
        assert set(stage["also_under"]) == {"B"}
        for block, scores in stage["also_under"]["B"]["per_block"].items():
            rows_b = [r for r in under_b if r["block"] == block]
            assert scores["n"] == stage["per_block"][block]["n"] == len(rows_b)
            assert scores["exact"] == pytest.approx(sum(r["exact"] for r in rows_b) / len(rows_b))
    assert set(metrics["final"]["also_under"]) == {"B"}
    assert metrics["final"]["also_under"]["B"]["exact"] is not None


def test_the_b_rows_scored_the_b_rendered_prompts(a_job, tiny):
    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.evaluate import prompt_hash

    spec, job_dir, _ = a_job
    _, tokenizer = tiny
    data = load_study_data(spec.data)
    records = {r.uid: r for block in data.blocks for r in data.heldout[block]}
    rows = _rows(job_dir, len(spec.order))
    half = len(rows) // 2
    rendered = {}
    for condition in ("A", "B"):
        # Held-out prompts are cut like training ones, leaving room for the answer (recipe 2).
        examples = tokenize_examples(tokenizer, [records[r["item"]] for r in rows[:half]], condition,
                                     max_seq_len=spec.train.max_seq_len, reserve=spec.eval.max_new_tokens)
        rendered[condition] = [prompt_hash(e.prompt_ids) for e in examples]
    assert [r["prompt_hash"] for r in rows[:half]] == rendered["A"]
    assert [r["prompt_hash"] for r in rows[half:]] == rendered["B"]
    assert rendered["A"] != rendered["B"]  # some held-out item has earlier API calls to strip


def test_a_and_b_trained_adapters_both_scored_under_b_fill_the_train_eval_table(a_job, finished_job, tmp_path):
    from trajhpc.results import aggregate as agg

    spec, job_dir, _ = a_job
    study = tmp_path / "s1"
    shutil.copytree(job_dir, study / job_dir.name)
    shutil.copytree(finished_job.job_dir, study / finished_job.spec.job_id)
    (result,) = agg.aggregate([tmp_path], resamples=200)
    assert sorted(result.units["arm"].to_list()) == ["A", "B"]  # one variant: also_under does not split arms
    metrics = json.loads((job_dir / "metrics.json").read_text())
    b_metrics = json.loads((finished_job.job_dir / "metrics.json").read_text())

    long = result.long
    assert set(zip(long["arm"], long["eval_condition"])) == {("A", "A"), ("A", "B"), ("B", "B")}
    a_under_b = long.filter((pl.col("arm") == "A") & (pl.col("eval_condition") == "B") & (pl.col("stage") == 2))
    assert dict(zip(a_under_b["block"], a_under_b["exact"])) == {
        b: s["exact"] for b, s in metrics["stages"][2]["also_under"]["B"]["per_block"].items()}
    # Every other table reads the own-condition rows: A's units are its A scores.
    a_unit = result.units.filter(pl.col("arm") == "A").row(0, named=True)
    assert a_unit["exact"] == pytest.approx(metrics["final"]["exact"])

    cells = {(r["arm"], r["eval_condition"], r["metric"]): r for r in result.train_eval.to_dicts()}
    assert set(cells) == {(a, c, m) for a, c in (("A", "A"), ("A", "B"), ("B", "B")) for m in ("exact", "name")}
    assert cells[("A", "B", "name")]["mean"] == pytest.approx(metrics["final"]["also_under"]["B"]["name"])
    assert cells[("B", "B", "name")]["mean"] == pytest.approx(b_metrics["final"]["name"])
    assert cells[("A", "A", "exact")]["own"] and not cells[("A", "B", "exact")]["own"]

    paired = {(r["kind"], r["arm"], r["baseline"], r["eval_condition"], r["metric"]): r
              for r in result.train_eval_paired.to_dicts()}
    train = paired[("train", "B", "A", "B", "name")]
    assert train["pairs"] == 1
    assert train["mean_diff"] == pytest.approx(b_metrics["final"]["name"] - metrics["final"]["also_under"]["B"]["name"])
    assert paired[("eval", "A", "A", "B", "name")]["eval_baseline"] == "A"

    out = agg.write_outputs(result, plots=False)
    assert pl.read_csv(out / "train_eval.csv").height == 6
    assert "eval_condition" in pl.read_csv(out / "long.csv").columns
    report = (out / "report.md").read_text()
    assert "## Training × evaluation" in report and "train B − train A, both evaluated under B" in report
