"""`trajhpc aggregate`: reading job directories, exclusions, the long table, statistics and outputs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402
from rich.console import Console

from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir.paths import RECORD, RECORD_SCHEMA
from trajhpc.results import aggregate as agg
from trajhpc.results import plots, report, stats
from trajhpc.results import tables as tbl
from trajhpc.results.studyresult import StudyResult

ORDERS = [("a", "b", "c"), ("c", "b", "a")]


def _result(root: Path, **kwargs) -> StudyResult:
    (result,) = agg.aggregate([root], resamples=500, **kwargs)
    return result


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    """18 complete jobs: arms A, B, A@B x seeds 0-2 x two orders."""
    sj.write_study(tmp_path, "s1")
    return tmp_path


def _job(root: Path, arm: str = "A", seed: int = 0, order=ORDERS[0]) -> Path:
    condition, _, match = arm.partition("@")
    return root / "s1" / sj.spec_for(condition, seed=seed, order=order, match=match or None).job_id


# ---------------------------------------------------------------- the long table


def test_long_table_has_one_row_per_job_stage_block(study):
    r = _result(study)
    assert r.long.height == 18 * 4 * 3
    assert r.long.select("job_id", "stage", "block").is_duplicated().sum() == 0
    expected = {
        "study", "job_id", "condition", "arm", "seed", "order", "stage", "trained_block", "block", "block_pos",
        "supervised_tokens", "total_tokens", "padded_tokens", "cum_supervised_tokens", "cum_total_tokens",
        "cum_padded_tokens", "n", "exact", "name", "name_excl_toolsearcher", "parse_fail", "arg_f1",
        "errors_no_call", "errors_wrong_name",
    }
    assert expected <= set(r.long.columns)
    assert set(r.long["order"]) == {"a>b>c", "c>b>a"}
    assert set(r.long["study"]) == {"s1"}


def test_long_table_joins_scores_with_token_counts(study):
    r = _result(study)
    spec = sj.spec_for("B", seed=1, order=ORDERS[1])
    rows = r.long.filter(pl.col("job_id") == spec.job_id).sort("stage", "block")
    per_stage = sj.ARM_TOKENS["B"] + 10  # seed 1
    # stage t trains block order[t-1] with per_stage * t supervised tokens (fixture)
    stage2 = rows.filter((pl.col("stage") == 2) & (pl.col("block") == "a"))
    assert stage2["trained_block"].item() == "b" and stage2["block_pos"].item() == 3
    assert stage2["supervised_tokens"].item() == per_stage * 2
    assert stage2["cum_supervised_tokens"].item() == per_stage * (1 + 2)
    assert stage2["cum_total_tokens"].item() == 4 * per_stage * 3
    matrix = sj.synthetic_matrix("B", 1, ORDERS[1], ["a", "b", "c"])
    assert rows.filter(pl.col("stage") == 2).sort("block")["exact"].to_list() == matrix[2]


def test_units_final_scores_and_continual_metrics_match_the_matrices(study):
    r = _result(study)
    for arm, seed, order in [("A", 0, ORDERS[0]), ("B", 2, ORDERS[1])]:
        m = np.array(sj.synthetic_matrix(arm, seed, order, ["a", "b", "c"]))
        pos = {b: i for i, b in enumerate(order, start=1)}
        col = {b: j for j, b in enumerate(["a", "b", "c"])}
        unit = r.units.filter(pl.col("job_id") == _job(study, arm, seed, order).name).row(0, named=True)
        assert unit["exact"] == pytest.approx(m[3].mean())
        bwt = np.mean([m[3, col[b]] - m[pos[b], col[b]] for b in order[:2]])
        since_learned = np.mean([m[pos[b]:3, col[b]].max() - m[3, col[b]] for b in order[:2]])
        chaudhry = np.mean([m[1:3, col[b]].max() - m[3, col[b]] for b in order[:2]])
        fwt = np.mean([m[pos[b] - 1, col[b]] - m[0, col[b]] for b in order[1:]])
        got = [unit[f"{k}_exact"] for k in ("bwt", "forgetting_chaudhry", "forgetting_since_learned", "fwt")]
        assert got == pytest.approx([bwt, chaudhry, since_learned, fwt])


def test_summary_and_paired_differences_by_hand(study):
    r = _result(study)
    units = {(u["arm"], u["seed"], u["order"]): u for u in r.units.to_dicts()}
    keys = [(s, ">".join(o)) for s in (0, 1, 2) for o in ORDERS]
    a = np.array([units[("A", *k)]["exact"] for k in keys])
    b = np.array([units[("B", *k)]["exact"] for k in keys])
    row = r.summary.filter((pl.col("arm") == "B") & (pl.col("metric") == "exact")).row(0, named=True)
    assert (row["mean"], row["sd"], row["n"]) == (pytest.approx(b.mean()), pytest.approx(b.std(ddof=1)), 6)
    assert row["ci_lo"] <= row["mean"] <= row["ci_hi"]
    b_vs_a = (pl.col("arm") == "B") & (pl.col("baseline") == "A") & (pl.col("metric") == "exact")
    pair = r.paired.filter(b_vs_a).row(0, named=True)
    d = b - a
    assert pair["pairs"] == 6 and pair["mean_diff"] == pytest.approx(d.mean())
    from itertools import product

    hits = sum(abs(np.mean(np.array(s) * d)) >= abs(d.mean()) - 1e-12 for s in product([-1, 1], repeat=6))
    assert pair["p_value"] == pytest.approx(hits / 64) and pair["p_exact"]
    # The CIs are bootstraps over units: per arm over its jobs (in job id order), paired
    # over the (seed, order) pairs (in that order). Resampling anything else (blocks,
    # stages, rows of the long table) gives other bounds.
    by_id = sorted(zip([_job(study, "B", s, tuple(o.split(">"))).name for s, o in keys], b))
    arm_ci = stats.bootstrap_ci([v for _, v in by_id], resamples=500)
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx(tuple(arm_ci), abs=1e-12)
    pair_ci = stats.bootstrap_ci(d, resamples=500)
    assert (pair["ci_lo"], pair["ci_hi"]) == pytest.approx(tuple(pair_ci), abs=1e-12)
    for arm, metric in [("A", "exact"), ("A@B", "supervised_tokens"), ("B", "bwt_exact")]:
        sub = r.units.filter(pl.col("arm") == arm).sort("job_id")
        got = r.summary.filter((pl.col("arm") == arm) & (pl.col("metric") == metric)).row(0, named=True)
        ci = stats.bootstrap_ci(sub[metric].cast(pl.Float64).to_numpy(), resamples=500)
        assert (got["ci_lo"], got["ci_hi"], got["n"]) == (pytest.approx(ci[0], abs=1e-12), pytest.approx(ci[1], abs=1e-12), 6)
    stage = r.stages.filter((pl.col("arm") == "A") & (pl.col("metric") == "acc_exact") & (pl.col("stage") == 2)).row(0, named=True)
    curve = r.long.filter((pl.col("arm") == "A") & (pl.col("stage") == 2)).group_by("job_id").agg(pl.col("exact").mean()).sort("job_id")
    ci = stats.bootstrap_ci(curve["exact"].to_numpy(), resamples=500)
    assert (stage["ci_lo"], stage["ci_hi"]) == pytest.approx(tuple(ci), abs=1e-12)
    # Every pair of arms is compared, B first and the stripped A last.
    pairs = r.paired.select("arm", "baseline").unique(maintain_order=True).rows()
    assert pairs == [("B", "A@B"), ("B", "A"), ("A@B", "A")]


def test_compute_matching_ratio_and_budget(study):
    r = _result(study)
    sup = r.summary.filter(pl.col("metric") == "supervised_tokens")
    ratio = dict(zip(sup["arm"], sup["ratio_vs_A"]))
    a_mean = np.mean([(sj.ARM_TOKENS["A"] + 10 * s) * 6 for s in (0, 1, 2)])
    b_mean = np.mean([(sj.ARM_TOKENS["B"] + 10 * s) * 6 for s in (0, 1, 2)])
    assert ratio["A"] == pytest.approx(1.0) and ratio["B"] == pytest.approx(b_mean / a_mean)
    assert r.summary.filter(pl.col("metric") == "exact")["ratio_vs_A"].is_null().all()
    # Budget: the smallest final count of any unit (A, seed 0: 100 + 200 + 300).
    assert r.budgets["supervised"] == 600
    # B seed 0 reaches 125, 375, 750 supervised tokens: 600 lies 60% into its last stage.
    m = np.array(sj.synthetic_matrix("B", 0, ORDERS[0], ["a", "b", "c"])).mean(axis=1)
    unit = r.units.filter(pl.col("job_id") == _job(study, "B").name).row(0, named=True)
    assert unit["exact_at_budget_supervised"] == pytest.approx(m[2] + (m[3] - m[2]) * (600 - 375) / 375)
    a_unit = r.units.filter(pl.col("job_id") == _job(study, "A").name).row(0, named=True)
    assert a_unit["exact_at_budget_supervised"] == pytest.approx(a_unit["exact"])  # exactly at its end
    assert unit["exact_per_m_supervised"] == pytest.approx(unit["exact"] / 750e-6)


def test_flops_from_recorded_parameter_counts_else_null(tmp_path):
    spec = sj.spec_for("A")
    sj.write_job(tmp_path / "s", spec, [[0.1] * 3] * 4, resources={"params_base": 1000, "params_trainable": 10})
    spec_b = sj.spec_for("B")
    sj.write_job(tmp_path / "s", spec_b, [[0.1] * 3] * 4)
    r = _result(tmp_path)
    flops = dict(zip(r.units["arm"], r.units["flops"]))
    padded = 5 * (100 + 200 + 300)  # fixture: padded = 5 x supervised
    assert flops["A"] == (4 * 1000 + 6 * 10) * padded
    assert flops["B"] is None  # tiny model, nothing recorded: unknown, not guessed


def test_smollm2_flops_from_the_model_table(tmp_path):
    spec = sj.spec_for("A", model="smollm2-135m-instruct")
    sj.write_job(tmp_path / "s", spec, [[0.1] * 3] * 4)
    unit = _result(tmp_path).units.row(0, named=True)
    assert unit["params_source"] == "model table"
    assert unit["flops"] == pytest.approx((4 * 134_515_008 + 6 * 16 * 30 * 10176) * 5 * 600)


# ---------------------------------------------------------------- bad jobs


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _set(name: str, **values):
    """Damage: overwrite top-level keys of one document."""
    return lambda job: _edit(job / name, lambda doc: doc.update(values))


def _change(name: str, change):
    return lambda job: _edit(job / name, change)


def _truncate(name: str, keep: int = 50):
    return lambda job: (job / name).write_text((job / name).read_text()[:keep])


def _remove(name: str):
    return lambda job: (job / name).unlink()


def _stages(n: int, **values):
    return _change("metrics.json", lambda m: m.update(stages=m["stages"][:n], **values))


BAD_JOBS = [
    pytest.param(_truncate("metrics.json", 30), "corrupt", "metrics.json", "not valid JSON", id="bad-json"),
    pytest.param(_truncate("tokens.json"), "corrupt", "tokens.json", "not valid JSON", id="truncated"),
    pytest.param(_remove("metrics.json"), "incomplete", "metrics.json", "missing", id="no-metrics"),
    pytest.param(_remove("tokens.json"), "incomplete", "tokens.json", "missing", id="no-tokens"),
    pytest.param(_set("metrics.json", schema="other/2"), "foreign", "metrics.json", "other/2", id="foreign-metrics"),
    pytest.param(_set("spec.json", schema="elsewhere/1"), "foreign", "spec.json", "elsewhere/1", id="foreign-spec"),
    pytest.param(
        _change("metrics.json", lambda m: m["stages"][1]["per_block"]["a"].pop("exact")),
        "corrupt", "metrics.json", "stages.1.per_block.a.exact", id="missing-field",
    ),
    pytest.param(
        _change("metrics.json", lambda m: m["stages"][2]["per_block"]["b"].update(exact=1.5)),
        "corrupt", "metrics.json", "stages.2.per_block.b.exact", id="out-of-range",
    ),
    pytest.param(_set("spec.json", condition="Z"), "corrupt", "spec.json", "condition", id="bad-spec"),
    pytest.param(_stages(2, complete=False), "incomplete", "metrics.json", "stage 1 of 3", id="not-complete"),
    pytest.param(_stages(3), "incomplete", "metrics.json", "stage 2 of 3", id="too-few-stages"),
    pytest.param(_stages(0, complete=False), "incomplete", "metrics.json", "no stage evaluated yet", id="no-stages"),
    pytest.param(
        _change("tokens.json", lambda m: m.update(stages=m["stages"][:2])), "incomplete", "tokens.json", "2 stages",
        id="tokens-short",
    ),
    pytest.param(_set("spec.json", seed=99), "mismatch", "spec.json", "hashes to", id="spec-hash"),
    pytest.param(_set("metrics.json", job_id="000000000000"), "mismatch", "metrics.json", "job_id", id="metrics-id"),
    pytest.param(_set("metrics.json", order=["c", "b", "a"]), "mismatch", "metrics.json", "order", id="metrics-order"),
    pytest.param(_set("tokens.json", job_id="000000000000"), "mismatch", "tokens.json", "job_id", id="tokens-id"),
    pytest.param(_set("metrics.json", study="other"), "mismatch", "metrics.json", "study", id="study"),
    pytest.param(
        _change("metrics.json", lambda m: m["stages"][2].update(trained_block="c")),
        "corrupt", "metrics.json", "stages.2", id="stage-block",
    ),
]


@pytest.mark.parametrize("damage, status, file, words", BAD_JOBS)
def test_bad_jobs_are_listed_with_a_reason_and_excluded(study, damage, status, file, words):
    job = _job(study, "B", 1)
    damage(job)
    r = _result(study)
    row = r.jobs.filter(pl.col("job_id") == job.name).row(0, named=True)
    assert row["status"] == status and Path(row["file"]).name == file
    assert words in row["reason"], row["reason"]
    assert r.jobs.filter(pl.col("status") == "ok").height == 17
    assert job.name not in r.units["job_id"].to_list() and job.name not in r.long["job_id"].to_list()
    assert r.summary.filter((pl.col("arm") == "B") & (pl.col("metric") == "exact"))["n"].item() == 5
    assert r.paired.filter((pl.col("arm") == "B") & (pl.col("baseline") == "A"))["pairs"].to_list()[0] == 5
    with pytest.raises(TrajhpcError, match=rf"{job.name}/{file}: {status}:"):
        agg.aggregate([study], strict=True, resamples=100)


def test_results_without_spec_json_are_listed_as_corrupt(study):
    job = _job(study, "B", 1)
    (job / "spec.json").unlink()
    only_tokens = study / "s1" / "stray"
    only_tokens.mkdir()
    (only_tokens / "tokens.json").write_text((_job(study, "A") / "tokens.json").read_text())
    r = _result(study)
    rows = {row["job_id"]: row for row in r.jobs.to_dicts()}
    assert rows[job.name]["status"] == "corrupt" and Path(rows[job.name]["file"]).name == "spec.json"
    assert rows[job.name]["reason"] == "spec.json: missing (the folder has metrics.json and tokens.json)"
    assert rows["stray"]["status"] == "corrupt" and rows["stray"]["reason"] == "spec.json: missing (the folder has tokens.json)"
    assert r.jobs.height == 19 and r.units.height == 17
    with pytest.raises(TrajhpcError, match=r"spec\.json: corrupt: missing"):
        agg.aggregate([study], strict=True, resamples=100)


def _arm_without_count(spec) -> str:
    """JobSpec.arm as it was before it named the count: A@B for both budgets."""
    return spec.condition + (f"@{spec.token_budget.match}" if spec.token_budget else "")


@pytest.mark.parametrize("lossy_arm_names", [False, True])
def test_arms_differing_only_by_budget_count_are_kept_apart(tmp_path, monkeypatch, lossy_arm_names):
    from trajhpc.spec import JobSpec, TokenBudget

    if lossy_arm_names:  # the aggregate keeps them apart even when the arm names collide
        monkeypatch.setattr(JobSpec, "arm", property(_arm_without_count))
    keys = [(s, o) for s in (0, 1) for o in ORDERS]
    for seed, order in keys:
        for budget in (None, TokenBudget(match="B", count="supervised"), TokenBudget(match="B", count="total")):
            spec = JobSpec(condition="A", seed=seed, order=order, token_budget=budget)
            sj.write_job(tmp_path / "s", spec, sj.synthetic_matrix("A@B" if budget else "A", seed, order), blocks=sorted(order))
    r = _result(tmp_path)
    assert r.units.height == 12 and len(r.arms) == 3  # two A@B arms, not one with two units per (seed, order)
    assert r.units.group_by("arm", "seed", "order").len()["len"].max() == 1
    assert set(r.paired["pairs"].to_list()) == {len(keys)}  # one pair per distinct (seed, order) unit
    assert r.summary.filter(pl.col("metric") == "exact")["n"].to_list() == [4, 4, 4]
    if lossy_arm_names:
        assert sorted(r.arms) == ["A", "A@B:supervised", "A@B:total"]


def test_compare_arms_refuses_to_cross_multiply_duplicate_units():
    units = pl.DataFrame({
        "arm": ["A", "B", "B"], "seed": [0, 0, 0], "order": ["a>b", "a>b", "a>b"], "job_id": ["1", "2", "3"],
        **{m: [0.1, 0.2, 0.3] for m in tbl.PAIRED_METRICS},
    })
    with pytest.raises(ValueError, match=r"arm 'B' has 2 units for seed 0, order a>b .* would count them twice"):
        tbl.compare_arms(units, resamples=100)
    assert tbl.compare_arms(units.filter(pl.col("job_id") != "3"), resamples=100)["pairs"].to_list() == [1] * len(tbl.PAIRED_METRICS)


def test_failed_job_reason_quotes_its_state(study):
    job = _job(study)
    _edit(job / "metrics.json", lambda m: m.update(complete=False, stages=m["stages"][:2]))
    error = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory"
    (job / "state.json").write_text(json.dumps({"state": "failed", "error": error}))
    row = _result(study).jobs.filter(pl.col("job_id") == job.name).row(0, named=True)
    assert row["status"] == "incomplete"
    assert row["reason"].endswith("(state.json: failed: RuntimeError: CUDA out of memory)")


def test_a_renamed_job_folder_is_a_mismatch(study):
    job = _job(study)
    job.rename(job.parent / "renamed-job")
    row = _result(study).jobs.filter(pl.col("job_id") == "renamed-job").row(0, named=True)
    assert row["status"] == "mismatch" and job.name in row["reason"]


def test_a_study_of_only_bad_jobs_still_reports(tmp_path):
    d = sj.write_job(tmp_path / "s", sj.spec_for("A"), [[0.1] * 3] * 2)  # stage 1 of 3
    r = _result(tmp_path)
    assert r.units.height == 0 and r.jobs["status"].to_list() == ["incomplete"]
    out = agg.write_outputs(r, plots=True)
    assert "No complete job" in (out / "report.md").read_text()
    assert d.name in (out / "jobs.csv").read_text()


# ---------------------------------------------------------------- studies, targets, variants


def test_two_studies_in_one_root_are_kept_apart(tmp_path):
    sj.write_study(tmp_path, "s1", arms=("A", "B"), seeds=(0, 1))
    sj.write_study(tmp_path, "s2", arms=("A",), seeds=(0,), orders=[("a", "b", "c")])
    results = {r.study: r for r in agg.aggregate([tmp_path], resamples=100)}
    assert set(results) == {"s1", "s2"}
    assert results["s1"].units.height == 8 and results["s2"].units.height == 1
    assert set(results["s2"].long["study"]) == {"s2"}
    assert results["s2"].paired.height == 0
    for name, r in results.items():
        out = agg.write_outputs(r, plots=False)
        assert out == tmp_path / name / "aggregate"
        assert pl.read_parquet(out / "long.parquet")["study"].unique().to_list() == [name]


def test_a_manifest_target_means_its_run_root_and_study(tmp_path, monkeypatch):
    sj.write_study(tmp_path / "runs", "s1", arms=("A",), seeds=(0,))
    sj.write_study(tmp_path / "runs", "s2", arms=("B",), seeds=(0,))
    manifest = tmp_path / "m.yaml"
    manifest.write_text("study: s2\nrun_root: runs\nconditions: [B]\norders: [[a, b, c]]\n")
    monkeypatch.chdir(tmp_path)
    (r,) = agg.aggregate([manifest], resamples=100)
    assert r.study == "s2" and r.units["arm"].unique().to_list() == ["B"]


# ---------------------------------------------------------------- the study's manifest: arm order, primary

ARMS_AB = "conditions: [A, B, {condition: A, token_budget: {match: B}}]\n"


def _manifest(path: Path, root: Path, study: str = "s1", extra: str = "") -> Path:
    path.write_text(f"study: {study}\nrun_root: {root}\n{ARMS_AB}{extra}")
    return path


def _record_manifest(study_dir: Path, manifest: Path) -> None:
    for job in study_dir.iterdir():
        if (job / "spec.json").exists():
            (job / RECORD).write_text(json.dumps({"schema": RECORD_SCHEMA, "manifest": str(manifest)}))


def test_arms_follow_the_manifest_order_everywhere(study, tmp_path):
    (r,) = agg.aggregate([_manifest(tmp_path / "m.yaml", study)], resamples=100)
    assert r.arms == ["A", "B", "A@B"] and r.listed_arms == ("A", "B", "A@B")
    # The synthetic jobs are not in the manifest's grid (blocks a, b, c): read anyway, and said.
    assert any("None of the 18 job directories in this folder is in the grid of" in n for n in r.notes)
    out = agg.write_outputs(r, plots=False)
    assert pl.read_csv(out / "summary.csv")["arm"].unique(maintain_order=True).to_list() == ["A", "B", "A@B"]
    assert pl.read_csv(out / "units.csv")["arm"].unique(maintain_order=True).to_list() == ["A", "B", "A@B"]
    assert pl.read_csv(out / "stages.csv")["arm"].unique(maintain_order=True).to_list() == ["A", "B", "A@B"]
    text = (out / "report.md").read_text()
    final = text.split("## Final accuracy")[1].split("##")[0]
    assert [line.split(" | ")[0] for line in final.splitlines() if line.startswith(("| A", "| B"))] == [
        "| A", "| B", "| A@B"]
    console = Console(record=True, width=200)
    report.print_summary(console, r)
    rows = [line.split()[1] for line in console.export_text().splitlines() if line.startswith(("│ A", "│ B"))]
    assert rows[:3] == ["A", "B", "A@B"]
    for ax in plots.stages_figure(r).axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == ["A", "B", "A@B"]
    # Comparisons keep their direction (B minus the others, anything minus A), in the arms' order.
    assert r.paired.select("arm", "baseline").unique(maintain_order=True).rows() == [
        ("B", "A"), ("A@B", "A"), ("B", "A@B")]


def test_the_manifest_recorded_by_submit_is_found_when_it_names_the_study(study, tmp_path):
    other = _manifest(tmp_path / "other.yaml", study, study="another-study")
    _record_manifest(study / "s1", other)
    assert _result(study).arms == ["B", "A@B", "A"]  # names another study: not this one's
    _record_manifest(study / "s1", tmp_path / "gone.yaml")
    assert _result(study).arms == ["B", "A@B", "A"]  # no longer there: today's order, quietly
    (tmp_path / "broken.yaml").write_text("study: s1\nconditions: [\n")
    _record_manifest(study / "s1", tmp_path / "broken.yaml")
    r = _result(study)
    assert r.arms == ["B", "A@B", "A"] and r.manifest is None and not r.notes
    _record_manifest(study / "s1", _manifest(tmp_path / "m.yaml", study))
    r = _result(study)
    assert r.arms == ["A", "B", "A@B"] and r.manifest == str(tmp_path / "m.yaml")
    # A manifest named as the target wins over the recorded one.
    given = tmp_path / "given.yaml"
    given.write_text(f"study: s1\nrun_root: {study}\nconditions: [B, A]\n")
    (r,) = agg.aggregate([given], resamples=100)
    assert r.arms == ["B", "A", "A@B"]  # A@B is not among its conditions: after them


def test_analysis_primary_from_the_manifest_marks_paired_csv_and_the_report(study, tmp_path):
    extra = "analysis: {primary: {arm: A@B, baseline: B, metric: exact_at_budget_total}}\n"
    (r,) = agg.aggregate([_manifest(tmp_path / "m.yaml", study, extra=extra)], resamples=100)
    out = agg.write_outputs(r, plots=False)
    paired = pl.read_csv(out / "paired.csv")
    assert paired.filter(pl.col("primary")).select("arm", "baseline", "metric", "test").rows() == [
        ("A@B", "B", "exact_at_budget_total", "sign-flip")]
    # The declared direction holds for its two arms (A@B − B rather than B − A@B), with the sign it implies.
    default = _result(study).paired
    flipped = r.paired.filter((pl.col("arm") == "A@B") & (pl.col("baseline") == "B"))
    assert flipped["mean_diff"].to_list() == pytest.approx(
        [-d for d in default.filter((pl.col("arm") == "B") & (pl.col("baseline") == "A@B"))["mean_diff"]])
    primary = paired.filter(pl.col("primary")).row(0, named=True)
    assert primary["p_holm"] == primary["p_value"]  # the primary is not adjusted
    text = (out / "report.md").read_text()
    assert ("The primary comparison, A@B − B in exact @ total-token budget (declared in the manifest's "
            "`analysis.primary`), sign-flip over units, is not adjusted.") in text
    assert "| A@B − B (primary) | exact @ total-token budget |" in text
    assert "| B − A (primary)" not in text


def test_the_default_primary_says_it_is_the_default(study):
    text = agg.write_outputs(_result(study), plots=False).joinpath("report.md").read_text()
    assert ("The primary comparison, B − A in final exact accuracy (the default; a manifest's "
            "`analysis.primary` declares another), sign-flip over units, is not adjusted.") in text


@pytest.mark.parametrize(
    "text, message",
    [
        ("run_root: runs\nconditions: [A]\n", r"m.yaml.*study"),
        ("study: [1, 2\n", r"m.yaml:2: not valid YAML"),
        ("study: nope\nconditions: [A]\n", "no jobs yet"),
    ],
)
def test_bad_manifest_targets(tmp_path, monkeypatch, text, message):
    (tmp_path / "m.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrajhpcError, match=message):
        agg.aggregate([Path("m.yaml")])


def test_missing_or_empty_targets(tmp_path):
    with pytest.raises(TrajhpcError, match="no such run root or manifest"):
        agg.aggregate([tmp_path / "nope"])
    with pytest.raises(TrajhpcError, match="no job directories"):
        agg.aggregate([tmp_path])


def test_a_job_directory_found_twice_counts_once(study):
    (r,) = agg.aggregate([study, study / "s1", _job(study)], resamples=100)
    assert r.jobs.height == 18


def test_mixed_settings_split_arms_by_variant(tmp_path):
    for lr in (1e-4, 2e-4):
        for seed in (0, 1):
            spec = sj.spec_for("A", seed=seed, train={"lr": lr})
            sj.write_job(tmp_path / "s", spec, [[0.1] * 3] * 4)
    r = _result(tmp_path)
    arms = sorted(r.units["arm"].unique().to_list())
    assert len(arms) == 2 and all(a.startswith("A (") for a in arms)
    assert r.paired.height == len(tbl.compared_metrics(r.units))  # the two variants of A are compared


# ---------------------------------------------------------------- outputs and the command


def test_outputs_are_written_and_consistent(study):
    r = _result(study)
    out = agg.write_outputs(r, plots=False)
    names = {p.name for p in out.iterdir()}
    tables = {"long.parquet", "long.csv", "units.csv", "summary.csv", "stages.csv", "paired.csv", "jobs.csv"}
    assert tables | {"report.md", "tables.tex", "report.html"} <= names
    assert not any(n.endswith(".png") for n in names)
    assert not any(n.startswith(".") for n in names)  # no temp files left behind
    assert pl.read_parquet(out / "long.parquet").equals(r.long)
    summary = pl.read_csv(out / "summary.csv")
    assert summary.columns == ["arm", "metric", "mean", "sd", "ci_lo", "ci_hi", "n", "ratio_vs_A"]
    assert summary.height == 3 * len(tbl.SUMMARY_METRICS)
    # A second run over the same root ignores the aggregate folder it wrote.
    assert _result(study).jobs.height == 18


def test_aggregate_command_prints_a_summary_and_writes_plots(study):
    console = Console(record=True, width=200)
    agg.aggregate_command(console, [study], strict=False, plots=True)
    text = console.export_text()
    assert "study s1" in text and "18 complete jobs, 0 excluded" in text and "B − A" in text
    out = study / "s1" / "aggregate"
    for png in plots.PLOT_FILES:  # the figures' content: tests/results/test_plots.py
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in (out / "report.md").read_text()


def test_cli_strict_reports_the_bad_file_on_one_line(study):
    job = _job(study)
    (job / "metrics.json").write_text("{")
    run = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "aggregate", str(study), "--strict", "--no-plots"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "metrics.json" in lines[0] and "corrupt" in lines[0], run.stderr
    assert not (study / "s1" / "aggregate").exists()


def test_arms_without_common_seed_and_order_have_zero_pairs(tmp_path):
    sj.write_job(tmp_path / "s", sj.spec_for("A", seed=0), [[0.1] * 3] * 4)
    sj.write_job(tmp_path / "s", sj.spec_for("B", seed=1), [[0.2] * 3] * 4)
    r = _result(tmp_path)
    assert r.paired["pairs"].to_list() == [0] * len(tbl.compared_metrics(r.units, r.analysis))
    assert r.paired["mean_diff"].is_null().all() and r.paired["p_value"].is_null().all()
    assert "| B − A (primary) | exact | primary | 0 | – | – |" in agg.write_outputs(r, plots=True).joinpath("report.md").read_text()


def test_factorial_effects_from_synthetic_job_directories_with_a_planted_interaction(tmp_path):
    BLOCKS, spec_for, write_job = sj.BLOCKS, sj.spec_for, sj.write_job

    # Final exact per arm: A 0.2, calls-only +0.10, responses-only +0.05, B +0.10 +0.05 +0.15 (interaction).
    planted = {"A": 0.2, "calls-only": 0.3, "responses-only": 0.25, "B": 0.5}
    for arm, value in planted.items():
        for seed in (0, 1, 2):
            spec = spec_for(arm, seed=seed)
            v = value + 0.05 * seed  # units differ, effects do not
            write_job(tmp_path / "fact", spec, [[v] * len(BLOCKS)] * (len(BLOCKS) + 1), blocks=sorted(BLOCKS))
    (r,) = agg.aggregate([tmp_path])
    rows = {(e, m): est for e, m, est in r.factorial.select("effect", "metric", "estimate").iter_rows()}
    assert rows[("calls", "exact")] == pytest.approx((0.1 + 0.25) / 2)
    assert rows[("responses", "exact")] == pytest.approx((0.05 + 0.2) / 2)
    assert rows[("interaction", "exact")] == pytest.approx(0.15)
    assert set(r.factorial["n"].to_list()) == {3} and set(r.factorial["family"].to_list()) == {"plain"}
    out = agg.write_outputs(r, plots=False)
    assert pl.read_csv(out / "factorial.csv").height == 6  # 3 effects x (exact, name)
    # The same arms with tool documentation form a second family, not a variant of the first.
    for arm, value in planted.items():
        for seed in (0, 1, 2):
            spec = spec_for(arm, seed=seed).model_copy(update={"data": sj.spec_for(arm).data.model_copy(
                update={"tool_docs": "dialogue"})})
            assert spec.arm == f"{arm}+docs-dialogue"
            write_job(tmp_path / "fact", spec, [[value] * len(BLOCKS)] * (len(BLOCKS) + 1), blocks=sorted(BLOCKS))
    (r,) = agg.aggregate([tmp_path])
    assert set(r.factorial["family"].to_list()) == {"plain", "docs-dialogue"}
    docs = r.factorial.filter((pl.col("family") == "docs-dialogue") & (pl.col("metric") == "exact"))
    assert dict(docs.select("effect", "estimate").iter_rows())["interaction"] == pytest.approx(0.15)


RESOURCES = {"peak_memory_bytes": 1, "train_tokens_per_s": 1.0, "eval_examples_per_s": 1.0,
             "gradient_checkpointing": False, "params_base": 1000, "params_trainable": 10}


def test_compute_table_compares_arms_after_the_same_blocks(tmp_path):
    """compute.csv: at the end of stage k, each arm's mean cumulative tokens and accuracy, ratio to A there."""
    exact = {"A": [[0.0] * 3, [0.3, 0.0, 0.0], [0.3, 0.6, 0.0], [0.3, 0.6, 0.9]],
             "B": [[0.0] * 3, [0.6, 0.0, 0.0], [0.6, 0.6, 0.0], [0.6, 0.6, 0.6]]}
    supervised = {"A": [100, 100, 100], "B": [100, 100, 100]}
    total = {"A": [400, 400, 400], "B": [600, 500, 400]}
    for arm in ("A", "B"):
        for seed in (0, 1):
            sj.write_job(tmp_path / "s", sj.spec_for(arm, seed=seed, order=ORDERS[0]), exact[arm],
                         supervised=supervised[arm], total=total[arm], resources=RESOURCES)
    result = _result(tmp_path)
    c = {(r["arm"], r["stage"]): r for r in result.compute.to_dicts()}
    assert [a for a, _ in list(c)[::4]] == result.arms  # arms in the report's order, stages 0..3 each
    assert c[("B", 1)]["total_tokens"] == 600 and c[("A", 1)]["total_tokens"] == 400
    assert c[("B", 1)]["total_ratio_vs_A"] == pytest.approx(1.5)
    assert c[("B", 3)]["total_ratio_vs_A"] == pytest.approx(1500 / 1200)
    assert c[("A", 2)]["acc_exact"] == pytest.approx(0.3) and c[("B", 2)]["acc_exact"] == pytest.approx(0.4)
    assert c[("A", 2)]["acc_seen_exact"] == pytest.approx(0.45)  # blocks a, b trained: (0.3 + 0.6) / 2
    assert c[("B", 3)]["units"] == 2
    # 3 optimizer steps and supervised // 10 examples per stage (synthetic_jobs), cumulative
    assert [c[("A", t)]["steps"] for t in range(4)] == [0, 3, 6, 9]
    assert [c[("B", t)]["examples"] for t in range(4)] == [0, 10, 20, 30]
    # FLOPs = (4 N_base + 6 N_lora) x cumulative padded tokens (5 x supervised)
    assert [c[("B", t)]["flops"] for t in range(3)] == [0, (4 * 1000 + 6 * 10) * 500, (4 * 1000 + 6 * 10) * 1000]
    # the interpolated exact @ budget only on each arm's last stage, labelled exploratory
    assert c[("A", 3)]["exploratory_exact_at_budget_total"] == pytest.approx(result.units.filter(
        pl.col("arm") == "A")["exact_at_budget_total"].mean())
    assert c[("A", 2)]["exploratory_exact_at_budget_total"] is None
    out = agg.write_outputs(result, plots=False)
    assert pl.read_csv(out / "compute.csv").columns == [
        "arm", "stage", "units", "steps", "examples", "supervised_tokens", "total_tokens", "flops",
        "total_ratio_vs_A", "acc_exact", "acc_exact_ci_lo", "acc_exact_ci_hi", "acc_seen_exact",
        "exploratory_exact_at_budget_supervised", "exploratory_exact_at_budget_total"]
    assert "exact_at_budget_total" not in set(pl.read_csv(out / "summary.csv")["metric"])  # not a headline metric
    report = (out / "report.md").read_text()
    assert "### Stage by stage (the same blocks trained)" in report
    assert "| 1 | B | 2 | 3 | 10 | 100 | 600 |" in report
    assert "No token-matched arm in this study" in report
    assert "exact @ total-token budget" not in report and "Interpolated to equal compute" not in report
    assert "- B − A (plain): the same examples in the same optimizer steps; confound: B's longer prompts" in report


def test_steps_missing_from_old_tokens_files_show_as_missing_not_zero(tmp_path):
    for arm in ("A", "B"):
        sj.write_job(tmp_path / "s", sj.spec_for(arm, order=ORDERS[0]), [[0.0] * 3] * 4, steps=None)
    c = {(r["arm"], r["stage"]): r for r in _result(tmp_path).compute.to_dicts()}
    assert c[("A", 0)]["steps"] is None and c[("B", 3)]["steps"] is None
    assert c[("B", 3)]["examples"] == 60  # the counts the files have still show


def test_report_names_the_token_matched_arm_as_the_compute_control(study):
    report = agg.write_outputs(_result(study), plots=False).joinpath("report.md").read_text()
    assert "Compute control: B − A@B in final exact accuracy" in report


def test_a_grid_run_in_part_lists_every_missing_job_and_fails_strict(tmp_path):
    """One arm of the manifest's grid never ran: its jobs are listed as missing, never read as complete."""
    from trajhpc.study.grid import expand
    from trajhpc.study.manifest import load_manifest

    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"study: part\nrun_root: {tmp_path / 'runs'}\nconditions: [A, B]\nseeds: [0, 1]\n"
                        "orders: [[care-appointments, medication-treatment]]\n")
    grid = expand(load_manifest(manifest))
    ran = [j for j in grid if j.spec.condition == "B"]
    for job in ran:  # arm B ran; arm A has no job directory
        sj.write_job(job.run_dir.parent, job.spec, [[0.5, 0.5]] * 3, blocks=sorted(job.spec.order), study="part")
    (result,) = agg.aggregate([manifest], resamples=100)
    missing = result.jobs.filter(pl.col("status") == "missing")
    assert sorted(missing["job_id"]) == sorted(j.job_id for j in grid if j.spec.condition == "A")
    assert all("arm A, seed" in reason for reason in missing["reason"])
    assert any("2 of the manifest's jobs have no job directory" in n for n in result.notes)
    text = agg.write_outputs(result, plots=False).joinpath("report.md").read_text()
    assert "2 job directories were found" in text and "## Excluded jobs" in text and "no job directory: arm A" in text
    with pytest.raises(TrajhpcError, match=r"missing: no job directory: arm A, seed 0, .*\(and 1 more\)"):
        agg.aggregate([manifest], strict=True, resamples=100)


def test_a_given_manifest_aggregates_its_grid_only_and_lists_the_foreign_jobs(tmp_path):
    """Another manifest's jobs share the study folder: with a manifest named, they are left out
    (listed as foreign, never read into the arms, never failing --strict), so the declared
    primary comparison is made on this grid's jobs."""
    from trajhpc.study.grid import expand
    from trajhpc.study.manifest import load_manifest

    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"study: mixed\nrun_root: {tmp_path / 'runs'}\nconditions: [A, B]\nseeds: [0, 1]\n"
                        "orders: [[care-appointments, medication-treatment]]\n")
    for job in expand(load_manifest(manifest)):
        sj.write_job(job.run_dir.parent, job.spec, [[0.5, 0.5]] * 3, blocks=sorted(job.spec.order), study="mixed")
    other = tmp_path / "other.yaml"  # the same study, other settings: its own jobs in the same folder
    other.write_text(manifest.read_text() + "train: {lr: 0.001}\n")
    foreign = expand(load_manifest(other))
    for job in foreign:
        sj.write_job(job.run_dir.parent, job.spec, [[0.1, 0.1]] * 3, blocks=sorted(job.spec.order), study="mixed")
    (result,) = agg.aggregate([manifest], strict=True, resamples=100)
    assert sorted(result.units["arm"].unique()) == ["A", "B"]  # no "A (5b1c37)": one variant
    assert result.paired.filter((pl.col("arm") == "B") & (pl.col("baseline") == "A")).height  # the primary, B − A
    left_out = result.jobs.filter(pl.col("status") == "foreign")
    assert sorted(left_out["job_id"]) == sorted(j.job_id for j in foreign)
    assert all("not in the grid of" in reason and "m.yaml" in reason for reason in left_out["reason"])
    assert any("4 job directories in this folder are not in the grid of" in n for n in result.notes)
    # Named as a folder, the study still holds every job, its arms split by variant and the split explained.
    (everything,) = agg.aggregate([tmp_path / "runs" / "mixed"], resamples=100)
    assert everything.units.height == 8 and all(" (" in a for a in everything.units["arm"].unique())
    assert any("variant" in n and "settings" in n for n in everything.notes)


def test_set_selects_the_grid_submit_ran_and_a_recorded_set_is_applied(tmp_path):
    """issue 23: `aggregate M.yaml --set ...` reads the grid `submit M.yaml --set ...` ran; without a target
    manifest, the manifest a record names is read with the overrides the record lists."""
    from trajhpc.study.grid import expand
    from trajhpc.study.manifest import load_manifest

    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"study: mixed\nrun_root: {tmp_path / 'runs'}\nconditions: [A, B]\nseeds: [0, 1]\n"
                        "orders: [[care-appointments, medication-treatment]]\n")
    plain = expand(load_manifest(manifest))
    overrides = ["train.lr=0.001", "conditions=[B, A]"]
    changed = expand(load_manifest(manifest, overrides))
    for jobs, value in ((plain, 0.5), (changed, 0.1)):
        for job in jobs:
            sj.write_job(job.run_dir.parent, job.spec, [[value, value]] * 3, blocks=sorted(job.spec.order),
                         study="mixed")
    (result,) = agg.aggregate([manifest], strict=True, resamples=100, overrides=overrides)
    assert sorted(result.jobs.filter(pl.col("status") == "foreign")["job_id"]) == sorted(j.job_id for j in plain)
    assert result.arms == ["B", "A"] and result.units.height == 4
    with pytest.raises(TrajhpcError, match="--set applies to a manifest"):
        agg.aggregate([tmp_path / "runs"], overrides=overrides)
    for job in changed:
        (job.run_dir / RECORD).write_text(json.dumps(
            {"schema": RECORD_SCHEMA, "manifest": str(manifest), "overrides": ["conditions=[B, A]"]}))
    import shutil

    for job in plain:
        shutil.rmtree(job.run_dir)
    (recorded,) = agg.aggregate([tmp_path / "runs"], resamples=100)
    # The file says [A, B]: B first comes from the recorded override (or from no manifest at all,
    # which the order [A, B] recorded below rules out).
    assert recorded.arms == ["B", "A"] and recorded.manifest == str(manifest)
    for job in changed:
        (job.run_dir / RECORD).write_text(json.dumps(
            {"schema": RECORD_SCHEMA, "manifest": str(manifest), "overrides": ["conditions=[A, B]"]}))
    assert agg.aggregate([tmp_path / "runs"], resamples=100)[0].arms == ["A", "B"]


def test_position_and_content_effects_with_a_slots_in_factorial_csv_and_the_report(tmp_path):
    BLOCKS, spec_for, write_job = sj.BLOCKS, sj.spec_for, sj.write_job

    # Final exact: A 0.2, A-slots +0.15 (position), B +0.10 more (content); calls-only, responses-only as before.
    planted = {"A": 0.2, "A-slots": 0.35, "calls-only": 0.3, "responses-only": 0.25, "B": 0.45}
    for arm, value in planted.items():
        for seed in (0, 1, 2):
            v = value + 0.05 * seed
            write_job(tmp_path / "fact", spec_for(arm, seed=seed), [[v] * len(BLOCKS)] * (len(BLOCKS) + 1),
                      blocks=sorted(BLOCKS))
    (r,) = agg.aggregate([tmp_path])
    exact = r.factorial.filter(pl.col("metric") == "exact")
    assert exact["effect"].to_list() == ["position", "content", "calls", "responses", "interaction"]
    rows = dict(exact.select("effect", "estimate").iter_rows())
    assert rows["position"] == pytest.approx(0.15) and rows["content"] == pytest.approx(0.10)
    out = agg.write_outputs(r, plots=False)
    assert pl.read_csv(out / "factorial.csv").height == 10  # 5 effects x (exact, name)
    text = (out / "report.md").read_text()
    assert "## Factorial: position x content, calls x responses" in text
    assert "| plain | position | exact | 0.150 [0.150, 0.150] |" in text


def test_ceiling_csv_per_arm_and_split_from_the_jobs_data(tmp_path):
    sj.write_study(tmp_path, "s", arms=("A", "B", "A@B"), seeds=(0,))
    (r,) = agg.aggregate([tmp_path])
    out = agg.write_outputs(r, plots=False)
    ceiling = pl.read_csv(out / "ceiling.csv")
    assert ceiling.columns == ["arm", "tool_docs", "split", "records", "distinct_prompts",
                               "shared_prompt_other_target", "ceiling_exact", "ceiling_name"]
    assert ceiling.select("arm", "split").rows() == [(a, s) for a in r.arms for s in ("train", "heldout")]
    held = {row["arm"]: row for row in ceiling.filter(pl.col("split") == "heldout").to_dicts()}
    # A@B is trained on A's prompts: A's ceiling. The synthetic jobs use the default split.
    for arm in ("A", "A@B"):
        assert (held[arm]["records"], held[arm]["distinct_prompts"], held[arm]["tool_docs"]) == (208, 71, "none")
        assert held[arm]["ceiling_exact"] == pytest.approx(74 / 208)
    assert held["B"]["ceiling_name"] == 1.0
    # The synthetic orders name no block of the data: nothing trained on, no train ceiling (not every record's).
    assert ceiling.filter(pl.col("split") == "train")["records"].to_list() == [0, 0, 0]
    assert "| 0.356† / 0.505† |" in (out / "report.md").read_text()  # the synthetic A scores above it


def test_an_arm_whose_data_cannot_be_loaded_has_no_ceiling_and_a_note(tmp_path):
    data = tmp_path / "data"
    data.mkdir()  # no record files in it
    for condition, value in (("A", 0.4), ("B", 0.5)):
        spec = sj.spec_for(condition, seed=0)
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"root": str(data)})})
        sj.write_job(tmp_path / "runs" / "s", spec, [[value] * 3] * 4)
    (r,) = agg.aggregate([tmp_path / "runs"])
    assert r.ceiling.height == 0
    assert [n.split(":")[0] for n in r.notes if n.startswith("no ceiling")] == [
        "no ceiling for arm B in ceiling.csv", "no ceiling for arm A in ceiling.csv"]
    text = agg.write_outputs(r, plots=False).joinpath("report.md").read_text()
    assert "| B | 1 | 0.500 | 0.600 | 0.550 | 0.250 | 0.500 | – / – |" in text and "Note: no ceiling for arm A" in text


def test_a_pooled_score_above_the_ceiling_is_marked(tmp_path):
    # The synthetic A scores 0.6 on items that are not the data's; A's ceiling on the default split is 0.356.
    sj.write_job(tmp_path / "s", sj.spec_for("A", seed=0), [[0.6] * 3] * 4)
    sj.write_job(tmp_path / "s", sj.spec_for("B", seed=0), [[0.6] * 3] * 4)
    (r,) = agg.aggregate([tmp_path])
    text = agg.write_outputs(r, plots=False).joinpath("report.md").read_text()
    assert "| A | 1 | 0.600 | 0.700 | 0.650 | 0.200 | 0.600 | 0.356† / 0.505† |" in text
    assert "| B | 1 | 0.600 | 0.700 | 0.650 | 0.200 | 0.600 | 0.990 / 1.000 |" in text  # B's ceiling holds
    assert "†: a unit of the arm scored above this ceiling" in text
    sj.write_job(tmp_path / "s", sj.spec_for("A", seed=0), [[0.3] * 3] * 4)  # the same job, rewritten below it
    (r,) = agg.aggregate([tmp_path])
    text = agg.write_outputs(r, plots=False).joinpath("report.md").read_text()
    assert "†" not in text.replace("the ceiling and † as in Final accuracy", "")  # the headline's legend


def test_gold_token_metrics_are_unknown_not_zero_where_no_job_scored_them(synthetic):
    """eval.gold_likelihood off (the synthetic jobs): the long table's teacher-forced columns are null and
    summary.csv's gold-token rows say n = 0 with no value, never 0.000."""
    assert synthetic.long["gold_token_acc"].null_count() == synthetic.long.height
    gold = synthetic.summary.filter(pl.col("metric").str.contains("gold_token_acc"))
    assert sorted(set(gold["metric"])) == sorted(["gold_token_acc", "bwt_gold_token_acc", "fwt_gold_token_acc",
                                                  "forgetting_chaudhry_gold_token_acc",
                                                  "forgetting_since_learned_gold_token_acc"])
    assert set(gold["n"]) == {0} and gold["mean"].null_count() == gold.height
