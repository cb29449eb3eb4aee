"""Training-loss curves from each job's train_log.jsonl: tolerant reading (a missing or damaged log
is no curve and a note, never an exception) and the mean loss per arm and global step."""

import json
import os
from pathlib import Path

import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402

from trajhpc.results import aggregate as agg
from trajhpc.results.losscurves import read_train_log
from trajhpc.results.studyresult import StudyResult

ORDERS = [("a", "b", "c"), ("c", "b", "a")]


def _result(root: Path) -> StudyResult:
    (result,) = agg.aggregate([root], resamples=200)
    return result


def test_loss_curves_are_the_mean_over_units_per_global_step(synthetic):
    b = synthetic.loss.filter(pl.col("arm") == "B").sort("global_step")
    assert b["global_step"].to_list() == list(range(1, 10)) and set(b["units"]) == {6}
    assert b["stage"].to_list() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # loss = 3 - 0.5 (stage - 1) - 0.1 step - 0.2 (B) + 0.01 seed, seeds 0-2 -> + 0.01 on average
    expected = [3 - 0.5 * (t - 1) - 0.1 * s - 0.2 + 0.01 for t in (1, 2, 3) for s in (1, 2, 3)]
    assert b["loss"].to_list() == pytest.approx(expected)
    assert synthetic.loss["arm"].unique(maintain_order=True).to_list() == synthetic.arms
    assert not synthetic.notes
    out = agg.write_outputs(synthetic, plots=False)
    assert pl.read_csv(out / "loss_curves.csv").columns == ["arm", "global_step", "stage", "loss", "units"]


def test_missing_or_damaged_logs_mean_no_curve_and_a_note(tmp_path):
    sj.write_study(tmp_path, "s", arms=("A", "B"), seeds=(0, 1))
    jobs = {(arm, seed, order): tmp_path / "s" / sj.spec_for(arm, seed=seed, order=order).job_id
            for arm in "AB" for seed in (0, 1) for order in ORDERS}
    (jobs[("A", 0, ORDERS[0])] / "train_log.jsonl").unlink()
    with (jobs[("B", 0, ORDERS[0])] / "train_log.jsonl").open("a") as f:
        f.write('{"stage": 3, "step": 4, "loss": 1.0, "lr": 0.001, "tokens": 4, "tokens_p')  # cut off
    r = _result(tmp_path)
    units = dict(r.loss.group_by("arm").agg(pl.col("units").max()).iter_rows())
    assert units == {"A": 3, "B": 3}
    assert r.notes == [
        "loss curves leave out 1 of 8 jobs without train_log.jsonl.",
        "loss curves leave out 1 of 8 jobs whose log is damaged: job "
        f"{jobs[('B', 0, ORDERS[0])].name}: train_log.jsonl: corrupt: line 10 is not valid JSON (truncated or "
        "damaged).",
    ]
    report = (agg.write_outputs(r, plots=False) / "report.md").read_text()
    assert "Note: loss curves leave out 1 of 8 jobs" in report


def test_no_logs_at_all_mean_no_loss_plot_and_one_note(tmp_path):
    for seed in (0, 1):
        sj.write_job(tmp_path / "s", sj.spec_for("A", seed=seed), [[0.1] * 3] * 4, train_log=False)
    r = _result(tmp_path)
    assert r.loss.height == 0
    assert r.notes == ["no loss curves: none of the 2 jobs has train_log.jsonl (jobs of earlier trajhpc versions "
                       "do not write it)."]


def _row(**change):
    return json.dumps({"stage": 1, "step": 1, "loss": 2.0, "lr": 1e-3, "tokens": 10, "tokens_per_s": 5.0, **change})


@pytest.mark.parametrize(
    "lines, reason",
    [
        ([_row(step=True)], "line 1: step True is not an integer"),
        ([_row(), _row(loss="nan")], "line 2: loss 'nan' is not a number (finite)"),
        ([_row(stage=4)], "line 1: stage 4 is not a training stage (1 to 3)"),
        ([_row(step=0)], "line 1: step 0 (steps count from 1 within a stage)"),
        (["[1, 2]"], "line 1: expected a JSON object, got list"),
        ([json.dumps({"stage": 1, "step": 1})], "line 1: no 'loss'"),
        ([""], "no steps logged"),
    ],
)
def test_damaged_log_lines_are_named(tmp_path, lines, reason):
    (tmp_path / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    frame, why = read_train_log(tmp_path, 3)
    assert frame is None and why == f"train_log.jsonl: corrupt: {reason}"


def test_a_log_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "train_log.jsonl")
    frame, why = read_train_log(tmp_path, 3)
    assert frame is None and why == "train_log.jsonl: corrupt: not a regular file (a FIFO)"


def test_a_resumed_job_keeps_the_last_entry_of_a_step_logged_twice(tmp_path):
    rows = [_row(stage=1, step=1, loss=3.0), _row(stage=1, step=2, loss=2.5),
            _row(stage=1, step=1, loss=2.9), _row(stage=1, step=2, loss=2.4), _row(stage=2, step=1, loss=2.0)]
    (tmp_path / "train_log.jsonl").write_text("\n".join(rows) + "\n")
    frame, why = read_train_log(tmp_path, 3)
    assert why is None and frame.select("stage", "step", "loss").rows() == [(1, 1, 2.9), (1, 2, 2.4), (2, 1, 2.0)]


def test_stages_of_different_lengths_are_counted_per_unit(tmp_path):
    # Unit 0 takes 2 steps in stage 1, unit 1 takes 3: stage 2 starts at global step 3 and 4.
    for seed, steps in ((0, 2), (1, 3)):
        log = [json.loads(_row(stage=t, step=s, loss=float(10 * t + s))) for t in (1, 2, 3) for s in range(1, steps + 1)]
        sj.write_job(tmp_path / "s", sj.spec_for("A", seed=seed), [[0.1] * 3] * 4, train_log=log)
    loss = _result(tmp_path).loss
    assert loss.filter(pl.col("global_step") == 3).row(0, named=True) == {
        "arm": "A", "global_step": 3, "stage": 1, "loss": (21 + 13) / 2, "units": 2}
    assert loss["global_step"].max() == 9 and loss.filter(pl.col("global_step") > 6)["units"].to_list() == [1] * 3
