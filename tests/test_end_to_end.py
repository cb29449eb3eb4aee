"""The README's main command for real: the smoke manifest through submit, then aggregate.

Runs the shipped `manifests/smoke.yaml` (8 tiny-model jobs on the local executor) in a
temporary run root, then checks what `trajhpc aggregate` made of its real output, and
that submitting again skips every finished job.
"""

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

import polars as pl
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def _trajhpc(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _trajhpc("submit", str(REPO / "manifests" / "smoke.yaml"), "--run-root", str(root), "--executor", "local", cwd=root)
    _trajhpc("aggregate", str(root), cwd=root)  # with plots
    return root


def test_every_smoke_job_completes_with_its_files(smoke_root):
    jobs = sorted(p for p in (smoke_root / "smoke").iterdir() if (p / "spec.json").exists())
    assert len(jobs) == 8
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["complete"] is True and metrics["job_id"] == job.name
        assert [s["stage"] for s in metrics["stages"]] == [0, 1, 2, 3, 4]
        assert len(list((job / "predictions").glob("stage-*.jsonl"))) == 5
        tokens = json.loads((job / "tokens.json").read_text())
        assert all(s["padded_tokens"] >= s["total_tokens"] for s in tokens["stages"])


def test_aggregate_of_the_real_smoke_output(smoke_root):
    out = smoke_root / "smoke" / "aggregate"
    long = pl.read_parquet(out / "long.parquet")
    # 8 jobs x 5 stages (zero-shot + 4 blocks) x 4 evaluated blocks
    assert long.height == 8 * 5 * 4
    assert sorted(long["arm"].unique().to_list()) == ["A", "B"]
    # The manifest submit recorded lists [A, B]: the aggregate keeps that order.
    assert pl.read_csv(out / "summary.csv")["arm"].unique(maintain_order=True).to_list() == ["A", "B"]
    per_arm = long.group_by("arm").agg(pl.col("job_id").n_unique().alias("units"))
    assert dict(per_arm.iter_rows()) == {"A": 4, "B": 4}
    # B keeps the trajectory in the prompt, so it reads more tokens than A on the same data
    final = long.filter(pl.col("stage") == 4).group_by("arm").agg(pl.col("cum_total_tokens").mean())
    totals = dict(final.iter_rows())
    assert totals["B"] > totals["A"]
    report = (out / "report.md").read_text()
    assert "8 complete jobs" in report and "1 pair of arms, each over 4 matched units" in report
    summary = pl.read_csv(out / "summary.csv")
    assert summary.height > 0


def test_submitting_again_skips_every_finished_job(smoke_root):
    text = _trajhpc(
        "submit", str(REPO / "manifests" / "smoke.yaml"), "--run-root", str(smoke_root), "--executor", "local", cwd=smoke_root
    )
    assert "8 done (skipped)" in text and "0 to submit" in text


def test_example_level_tables_of_the_real_smoke_output(smoke_root):
    out = smoke_root / "smoke" / "aggregate"
    summary = pl.read_csv(out / "summary.csv")
    assert {"exact_pooled", "exact_macro", "name_pooled", "name_macro"} <= set(summary["metric"].to_list())
    paired = pl.read_csv(out / "paired.csv")
    assert {"test", "p_value", "p_kind", "draws", "p_holm", "primary"} <= set(paired.columns)
    item = paired.filter(pl.col("items").is_not_null())
    # Per metric the item test, then the McNemar test conditional on the units.
    assert item["test"].to_list() == ["item-sign-flip-by-dialogue"] * 2 + ["mcnemar-conditional-on-units"] * 2
    # B vs A over the 4 shared (seed, order) units, 48 held-out items each (4 blocks x 12).
    assert set(item["metric"].to_list()) == {"exact", "name"} and set(item["pairs"].to_list()) == {4}
    assert set(item["items"].to_list()) == {48} and set(item["p_kind"].to_list()) == {"exact"}
    assert paired.filter(pl.col("primary"))[["arm", "baseline", "metric", "test"]].rows() == [
        ("B", "A", "exact", "sign-flip")
    ]
    assert all(h >= p for p, h in paired.select("p_value", "p_holm").drop_nulls().iter_rows())
    strata = pl.read_csv(out / "strata.csv")
    assert {"target_kind=tool", "target_kind=toolsearcher"} <= set(strata["stratum"].to_list())
    # Per arm and stratum pair, the counts add up to the arm's items (4 units x 48).
    kind = strata.filter(pl.col("stratum").str.starts_with("target_kind") & (pl.col("metric") == "exact"))
    assert dict(kind.group_by("arm").agg(pl.col("n").sum()).iter_rows()) == {"A": 192, "B": 192}
    baselines = pl.read_csv(out / "baselines.csv")
    always = baselines.filter((pl.col("baseline") == "always-toolsearcher") & (pl.col("block") == "all")
                              & (pl.col("metric") == "name"))
    assert always["n"].to_list() == [48] and 0.2 < always["value"][0] < 0.8
    assert pl.read_csv(out / "factorial.csv").height == 0  # only A and B: no factorial


def test_plots_of_the_real_smoke_output(smoke_root):
    from trajhpc.results import aggregate as agg
    from trajhpc.results import plots

    out = smoke_root / "smoke" / "aggregate"
    report = (out / "report.md").read_text()
    (result,) = agg.aggregate([smoke_root], resamples=200)
    figures = plots.figures(result)
    has_logs = all((job / "train_log.jsonl").exists() for job in (smoke_root / "smoke").iterdir()
                   if (job / "spec.json").exists())
    expected = [f for f in plots.PLOT_FILES if f != "loss_curves.png" or has_logs]
    assert list(figures) == expected
    for name in expected:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report
    assert result.arms == ["A", "B"]
    for name in ("accuracy_by_stage.png", "accuracy_vs_tokens.png"):
        fig = figures[name]
        assert fig.get_suptitle() == "smoke: n = 4 (2 seeds × 2 orders) per arm"
        for ax in fig.axes:
            low, high = ax.get_ylim()
            assert low == 0.0 and 0.1 <= high <= 1.0  # never below 0, never centred on noise
            arms = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith(("_", "budget"))]
            assert arms == ["A", "B"]
            assert ax.get_legend().get_texts()[-1].get_text().startswith("shaded: 95% bootstrap CI over units")
    blocks = ["care-appointments", "cost-insurance-other", "medication-treatment", "mental-wellness-fitness"]
    # Exact accuracy (top row, 0 here) and API-name accuracy (second row), which moves; the third row
    # (gold-token accuracy): test_rmatrix_by_block_shows_every_domain_rising_when_it_is_trained.
    heatmaps = [ax for ax in figures["rmatrix_by_block.png"].axes if ax.images][:4]
    for ax, (metric, word), arm in zip(heatmaps, [("exact", "exact")] * 2 + [("name", "API-name")] * 2, ["A", "B"] * 2):
        assert [t.get_text() for t in ax.get_xticklabels()] == blocks
        assert ax.get_title() == f"{arm}: {word} R[stage][block]\nn = 4 (2 seeds × 2 orders)"
        by_hand = (result.long.filter(pl.col("arm") == arm).group_by("stage", "block").agg(pl.col(metric).mean())
                   .sort("stage", "block")[metric].to_numpy().reshape(5, 4))
        assert (abs(ax.images[0].get_array() - by_hand) < 1e-12).all()
    if has_logs:
        loss = figures["loss_curves.png"].axes[0]
        assert [line.get_label() for line in loss.get_lines() if not line.get_label().startswith("_")] == ["A", "B"]
    else:
        assert "Note: no loss curves: none of the 8 jobs has train_log.jsonl" in report


# ---------------------------------------------------------------- the README's numbers

# Every number of the README's "What you will see" table must be within this of a fresh run's
# (the README states it too). The table is the one place the expected numbers live: after a
# change that moves them, re-measure (command 1) and edit that table, nothing here.
README_TOLERANCE = 0.03
# The smoke study's partition order (its first order), as the README's by-domain row lists the blocks.
PARTITION = ("care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other")
_NUMBER = re.compile(r"-?\d+\.\d+")


def _readme_table() -> dict[str, tuple[list[float], list[float]]]:
    """Row label -> (numbers in the A cell, numbers in the B cell) of the README's table of the smoke run."""
    text = (REPO / "README.md").read_text()
    section = text.split("### What you will see", 1)[1].split("\n## ", 1)[0]
    table = section.split("| | A | B |\n|---|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.strip().splitlines():
        label, a, b = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows[label] = ([float(x) for x in _NUMBER.findall(a)], [float(x) for x in _NUMBER.findall(b)])
    return rows


def _gains(long: pl.DataFrame, arm: str, metric: str = "name") -> pl.DataFrame:
    """Per unit and trained block: block, block_pos (k) and gain = R[k][b] - R[k-1][b] (API-name accuracy
    unless ``metric`` says otherwise)."""
    r = long.filter(pl.col("arm") == arm).select("job_id", "stage", "block", "block_pos", metric)
    learned = r.filter(pl.col("stage") == pl.col("block_pos")).select("job_id", "block", "block_pos", after=metric)
    before = r.filter(pl.col("stage") == pl.col("block_pos") - 1).select("job_id", "block", before=metric)
    joined = learned.join(before, on=["job_id", "block"])
    assert joined.height == 16  # 4 units x 4 blocks
    return joined.select("block", "block_pos", gain=pl.col("after") - pl.col("before"))


def _gains_by_position(long: pl.DataFrame, arm: str) -> dict[int, float]:
    """k -> mean over units of R[k][b_k] - R[k-1][b_k] (b_k: the k-th block trained)."""
    return dict(_gains(long, arm).group_by("block_pos").agg(pl.col("gain").mean()).iter_rows())


def _gains_by_domain(long: pl.DataFrame, arm: str, metric: str = "name") -> list[float]:
    """Per block of the partition (in its order), the mean over units of its gain at the stage that trains it."""
    by_block = dict(_gains(long, arm, metric).group_by("block").agg(pl.col("gain").mean()).iter_rows())
    return [by_block[b] for b in PARTITION]


def _gain_on_the_block_just_trained(long: pl.DataFrame, arm: str) -> float:
    """Mean over units and blocks of R[k][b_k] - R[k-1][b_k], API-name accuracy."""
    gains = _gains_by_position(long, arm)
    return sum(gains.values()) / len(gains)


def _measured(out) -> dict[str, Callable[[str], list[float]]]:
    """Row label of the README table -> how to compute that row's numbers for an arm from the aggregate."""
    summary = pl.read_csv(out / "summary.csv")
    stages = pl.read_csv(out / "stages.csv")
    long = pl.read_parquet(out / "long.parquet")

    def estimate(metric: str, *, ci: bool):
        def numbers(arm: str) -> list[float]:
            row = summary.filter((pl.col("arm") == arm) & (pl.col("metric") == metric)).row(0, named=True)
            return [row["mean"], row["ci_lo"], row["ci_hi"]] if ci else [row["mean"]]
        return numbers

    def paired_name() -> list[float]:
        paired = pl.read_csv(out / "paired.csv")
        row = paired.filter(
            (pl.col("arm") == "B") & (pl.col("baseline") == "A") & (pl.col("metric") == "name")
            & (pl.col("test") == "sign-flip")
        ).row(0, named=True)
        return [row["mean_diff"], row["ci_lo"], row["ci_hi"], row["p_value"]]

    def at_stage(metric: str, stage: int):
        def numbers(arm: str) -> list[float]:
            rows = stages.filter((pl.col("arm") == arm) & (pl.col("metric") == metric) & (pl.col("stage") == stage))
            return [rows["mean"][0]]
        return numbers

    return {
        "API-name accuracy before fine-tuning (stage 0), pooled": at_stage("acc_name", 0),
        "final API-name accuracy, pooled [95% CI over units]": estimate("name_pooled", ci=True),
        "final exact accuracy, pooled": estimate("exact_pooled", ci=False),
        "gain on the block just trained, API name (mean of R[k][k] − R[k−1][k])":
            lambda arm: [_gain_on_the_block_just_trained(long, arm)],
        "gain on the first block trained, API name (R[1][1] − R[0][1])":
            lambda arm: [_gains_by_position(long, arm)[1]],
        "gain when trained, by domain (care, medication, fitness, cost), API name":
            lambda arm: _gains_by_domain(long, arm),
        "gain when trained, by domain (care, medication, fitness, cost), gold-token accuracy":
            lambda arm: _gains_by_domain(long, arm, "gold_token_acc"),
        "BWT, gold-token accuracy [95% CI over units]": estimate("bwt_gold_token_acc", ci=True),
        "forgetting since learned, gold-token accuracy [95% CI over units]":
            estimate("forgetting_since_learned_gold_token_acc", ci=True),
        "FWT, API name [95% CI over units]": estimate("fwt_name", ci=True),
        "BWT, API name [95% CI over units]": estimate("bwt_name", ci=True),
        "forgetting since learned, API name [95% CI over units]": estimate("forgetting_since_learned_name", ci=True),
        "B − A, final API name [95% CI over pairs], sign-flip p": lambda arm: [] if arm == "A" else paired_name(),
    }


def test_the_readme_table_is_what_a_fresh_smoke_run_shows(smoke_root):
    """Every number of the README's smoke table, within README_TOLERANCE of this run's."""
    readme = _readme_table()
    measures = _measured(smoke_root / "smoke" / "aggregate")
    assert set(readme) == set(measures), "every row of the README table is checked here, and only those"
    text = (REPO / "README.md").read_text()
    assert f"±{README_TOLERANCE}" in text
    off = []
    for label, cells in readme.items():
        for arm, expected in zip(("A", "B"), cells):
            got = measures[label](arm)
            if len(expected) != len(got) or any(abs(e - g) > README_TOLERANCE for e, g in zip(expected, got)):
                off.append(f"{label} ({arm}): README {expected}, this run {[round(g, 3) for g in got]}")
    assert not off, "\n".join(off)


def test_fine_tuning_moves_the_r_matrix_and_units_differ(smoke_root):
    """What the smoke study is for: fine-tuning moves the R matrix (the first block lifts API-name
    accuracy on every block; the block just trained gains at least 0.10 in API-name accuracy, mean
    over units and blocks, in both arms: issue 21, and gains at every position, as the README says of
    rmatrix.png), and its CIs have width."""
    out = smoke_root / "smoke" / "aggregate"
    long = pl.read_parquet(out / "long.parquet")
    for arm in ("A", "B"):
        assert _gain_on_the_block_just_trained(long, arm) >= 0.10, arm
        # rmatrix.png's diagonal: every block, whichever position it is trained at, rises when it is
        gains = _gains_by_position(long, arm)
        assert all(gain > 0 for gain in gains.values()), (arm, gains)
        by_stage = long.filter(pl.col("arm") == arm).group_by("stage").agg(pl.col("name").mean())
        name = dict(by_stage.iter_rows())
        assert name[1] - name[0] >= 0.2, (arm, name)
    summary = pl.read_csv(out / "summary.csv").filter(pl.col("metric") == "name_pooled")
    assert all(hi - lo > 0 for lo, hi in summary.select("ci_lo", "ci_hi").iter_rows())


def test_rmatrix_by_block_shows_every_domain_rising_when_it_is_trained(smoke_root):
    """Issue 21's last criterion, read off the plot itself: in rmatrix_by_block.png's gold-token row
    (teacher-forced, eval.gold_likelihood), every outlined cell (a stage that trained the domain in
    some unit) is above the cell over it, in both arms; and in every unit each block gains when trained."""
    from trajhpc.results import aggregate as agg
    from trajhpc.results import plots

    (result,) = agg.aggregate([smoke_root], resamples=200)
    fig = plots.rmatrix_block_figure(result)
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 6
    for ax, arm in zip(heatmaps[4:], ("A", "B")):
        assert ax.get_title().startswith(f"{arm}: gold-token R[stage][block]")
        grid = ax.images[0].get_array()
        cells = {(round(r.get_y() + 0.5), round(r.get_x() + 0.5)) for r in ax.patches if r.get_label() == "_trained"}
        assert len(cells) == 8  # 4 domains x 2 orders
        rises = {cell: float(grid[cell] - grid[cell[0] - 1, cell[1]]) for cell in cells}
        assert all(rise > 0 for rise in rises.values()), (arm, rises)
    long = pl.read_parquet(smoke_root / "smoke" / "aggregate" / "long.parquet")
    for arm in ("A", "B"):
        gains = _gains(long, arm, "gold_token_acc")["gain"]
        assert (gains > 0).all(), (arm, gains.to_list())
