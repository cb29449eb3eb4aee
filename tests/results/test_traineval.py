"""The train x eval table and its paired differences, on synthetic job directories with known scores."""

from __future__ import annotations

import polars as pl
import pytest
import synthetic_jobs as sj

from trajhpc.results import aggregate as agg


@pytest.fixture(scope="module")
def crossed(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossed")
    sj.write_study(root, "s", seeds=(0, 1), also_under=("B",))  # A and A@B also under B, 0.05 higher there
    (result,) = agg.aggregate([root], resamples=200)
    return result


def test_cells_are_the_mean_final_score_under_each_condition(crossed):
    final = crossed.units.select("job_id", "arm", "exact")
    table = {(r["arm"], r["eval_condition"], r["metric"]): r for r in crossed.train_eval.to_dicts()}
    assert set(table) == {(a, c, m) for a, c in (("B", "B"), ("A@B", "A"), ("A@B", "B"), ("A", "A"), ("A", "B"))
                          for m in ("exact", "name")}
    for arm in ("A", "A@B"):
        own = final.filter(pl.col("arm") == arm)["exact"].mean()
        assert table[(arm, "A", "exact")]["mean"] == pytest.approx(own) and table[(arm, "A", "exact")]["own"]
        # Every block 0.05 higher under B (none of the synthetic finals is clipped at 1).
        assert table[(arm, "B", "exact")]["mean"] == pytest.approx(own + 0.05)
        assert table[(arm, "B", "exact")]["n"] == 4 and not table[(arm, "B", "exact")]["own"]
    # The own cells are the summary's numbers, CI included.
    summary = crossed.summary.filter((pl.col("arm") == "B") & (pl.col("metric") == "exact")).row(0, named=True)
    assert (table[("B", "B", "exact")]["ci_lo"], table[("B", "B", "exact")]["ci_hi"]) == (summary["ci_lo"], summary["ci_hi"])


def test_paired_rows_hold_the_prompt_or_the_training_fixed(crossed):
    rows = {(r["kind"], r["arm"], r["baseline"], r["eval_condition"], r["eval_baseline"], r["metric"]): r
            for r in crossed.train_eval_paired.to_dicts()}
    a = crossed.units.filter(pl.col("arm") == "A").sort("seed", "order")["exact"]
    b = crossed.units.filter(pl.col("arm") == "B").sort("seed", "order")["exact"]
    train = rows[("train", "B", "A", "B", "B", "exact")]
    assert train["pairs"] == 4 and train["mean_diff"] == pytest.approx((b - (a + 0.05)).mean())
    evaluated = rows[("eval", "A", "A", "B", "A", "exact")]
    assert evaluated["mean_diff"] == pytest.approx(0.05) and evaluated["p_value"] == pytest.approx(2 / 16)
    # Two arms each under its own condition are paired.csv's rows, not these.
    assert not [k for k in rows if k[0] == "train" and k[3] == "A"]


def test_a_study_without_the_option_has_no_train_eval_tables(synthetic, tmp_path):
    assert synthetic.train_eval.height == 0 and synthetic.train_eval_paired.height == 0
    assert set(synthetic.long["eval_condition"]) == set(synthetic.long["condition"])


def test_written_only_when_crossed(crossed):
    out = agg.write_outputs(crossed, plots=False)
    assert pl.read_csv(out / "train_eval.csv").columns[:4] == ["arm", "eval_condition", "own", "metric"]
    assert (out / "train_eval_paired.csv").exists()
