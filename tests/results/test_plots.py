"""The aggregate's plots, read from the figures themselves (axis limits, lines, labels, heatmap
values), and the training-loss curves read from the jobs' train_log.jsonl."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402

from trajhpc.results import aggregate as agg
from trajhpc.results import plots
from trajhpc.results.studyresult import StudyResult

ORDERS = [("a", "b", "c"), ("c", "b", "a")]
SEEDS = (0, 1, 2)


def _result(root: Path) -> StudyResult:
    (result,) = agg.aggregate([root], resamples=200)
    return result


@pytest.fixture(scope="module")
def figures(synthetic):
    return plots.figures(synthetic)


def _arm_lines(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _flat_study(root: Path, values: dict[str, float], seeds=SEEDS, orders=ORDERS) -> StudyResult:
    """Every block of every stage scores ``values[arm]`` in every unit: zero-width CIs."""
    for arm, v in values.items():
        for seed in seeds:
            for order in orders:
                sj.write_job(root / "flat", sj.spec_for(arm, seed=seed, order=order), [[v] * 3] * 4,
                             blocks=sorted(sj.BLOCKS))
    return _result(root)


# ---------------------------------------------------------------- accuracy plots


def test_every_plot_that_applies_is_built(figures):
    assert list(figures) == list(plots.PLOT_FILES)


def test_accuracy_axes_start_at_zero_and_stop_at_one(synthetic, figures):
    for name in ("accuracy_by_stage.png", "accuracy_vs_tokens.png"):
        for ax in figures[name].axes:
            assert ax.get_ylim() == (0.0, 1.0), name


def test_low_accuracy_is_padded_from_zero_not_centred_on_the_data(tmp_path):
    r = _flat_study(tmp_path, {"A": 0.0, "B": 0.0})  # exact 0, API name 0.1 (fixture)
    figs = plots.figures(r)
    exact, name = figs["accuracy_by_stage.png"].axes
    assert exact.get_ylim() == (0.0, 0.1) and name.get_ylim() == (0.0, 0.2)
    assert [ax.get_ylim() for ax in figs["accuracy_vs_tokens.png"].axes] == [(0.0, 0.1)] * 2
    assert plots.accuracy_limits([0.02, None, float("nan")]) == (0.0, 0.1)
    assert plots.accuracy_limits([0.31]) == (0.0, 0.4)
    assert plots.accuracy_limits([0.2, 0.5]) == (0.0, 1.0)
    assert plots.accuracy_limits([]) == (0.0, 1.0)


def test_one_line_per_arm_in_arm_order_each_with_its_own_style(synthetic, figures):
    for name in ("accuracy_by_stage.png", "accuracy_vs_tokens.png"):
        for ax in figures[name].axes:
            lines = [line for line in _arm_lines(ax) if not line.get_label().startswith("budget")]
            assert [line.get_label() for line in lines] == synthetic.arms == ["B", "A@B", "A"]
            assert len({line.get_marker() for line in lines}) == 3
            assert len({line.get_linestyle() for line in lines}) == 3
            assert _legend(ax)[:3] == synthetic.arms
    # Per-stage points are dodged sideways, so arms that coincide stay visible.
    ax = figures["accuracy_by_stage.png"].axes[0]
    xs = [line.get_xdata() for line in _arm_lines(ax)]
    assert np.allclose(xs[0], np.arange(4) - plots.DODGE) and np.allclose(xs[2], np.arange(4) + plots.DODGE)
    # The plotted means are the stage table's.
    b = synthetic.stages.filter((pl.col("arm") == "B") & (pl.col("metric") == "acc_exact")).sort("stage")
    assert np.allclose(_arm_lines(ax)[0].get_ydata(), b["mean"].to_numpy())


def test_titles_carry_n_as_seeds_times_orders(figures):
    assert figures["accuracy_by_stage.png"].get_suptitle() == "s1: n = 6 (3 seeds × 2 orders) per arm"
    assert figures["accuracy_vs_tokens.png"].get_suptitle().endswith("n = 6 (3 seeds × 2 orders) per arm")
    for name in ("rmatrix.png", "rmatrix_by_block.png"):
        titles = [ax.get_title() for ax in figures[name].axes if ax.get_title()]
        assert titles[0] == "B: exact R[stage][" + ("position" if name == "rmatrix.png" else "block") + \
            "]\nn = 6 (3 seeds × 2 orders)"


def test_units_text_names_missing_units_and_arms_that_differ(tmp_path):
    sj.write_study(tmp_path, "s", arms=("A", "B"), seeds=(0, 1))
    (tmp_path / "s" / sj.spec_for("B", seed=1, order=ORDERS[1]).job_id / "metrics.json").unlink()
    r = _result(tmp_path)
    assert plots.units_text(r, "B") == "n = 3 (2 seeds × 2 orders, 1 missing)"
    assert plots.units_text(r) == "B: n = 3 (2 seeds × 2 orders, 1 missing); A: n = 4 (2 seeds × 2 orders)"


def test_ci_bands_are_drawn_and_their_caption_says_when_they_have_zero_width(synthetic, figures, tmp_path):
    ax = figures["accuracy_by_stage.png"].axes[0]
    assert len(ax.collections) == 3  # one shaded band per arm
    assert _legend(ax)[-1] == "shaded: 95% bootstrap CI over units"
    flat = plots.figures(_flat_study(tmp_path, {"A": 0.2, "B": 0.2}))  # B's line lies on A's
    for ax in flat["accuracy_by_stage.png"].axes:
        assert _legend(ax)[-1] == ("shaded: 95% bootstrap CI over units\n"
                                   "zero width for B, A (units agree at every point)")
        b, a = _arm_lines(ax)
        assert np.allclose(b.get_ydata(), a.get_ydata()) and not np.allclose(b.get_xdata(), a.get_xdata())
        assert b.get_marker() != a.get_marker() and b.get_markerfacecolor() != a.get_markerfacecolor()


def test_a_single_unit_has_no_band_and_says_so(tmp_path):
    r = _flat_study(tmp_path, {"A": 0.3}, seeds=(0,), orders=ORDERS[:1])
    figs = plots.figures(r)
    assert "paired_forest.png" not in figs
    assert _legend(figs["accuracy_by_stage.png"].axes[0])[-1].endswith("no CI for A (fewer than 2 units)")


# ---------------------------------------------------------------- R matrices


def test_rmatrix_by_block_is_the_mean_over_orders_per_domain(synthetic, figures):
    axes = [ax for ax in figures["rmatrix_by_block.png"].axes if ax.images]
    assert len(axes) == 6  # one heatmap per arm and metric (the colour bar is not one)
    for ax, arm in zip(axes, synthetic.arms):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]
        by_hand = np.mean([sj.synthetic_matrix(arm, s, o, ["a", "b", "c"]) for s in SEEDS for o in ORDERS], axis=0)
        assert np.allclose(np.asarray(ax.images[0].get_array()), by_hand)
        assert ax.images[0].get_clim() == (0, 1)


def test_rmatrix_by_block_draws_api_name_accuracy_below_exact(synthetic, figures):
    """Exact accuracy can stay 0 where API-name accuracy moves (the smoke study): the second row of
    panels is each arm's API-name R matrix, labelled as such."""
    axes = [ax for ax in figures["rmatrix_by_block.png"].axes if ax.images]
    exact, name = axes[:3], axes[3:]
    assert [ax.get_title().split("\n")[0] for ax in exact] == [f"{a}: exact R[stage][block]" for a in synthetic.arms]
    assert [ax.get_title() for ax in name] == [f"{a}: API-name R[stage][block]\nn = 6 (3 seeds × 2 orders)"
                                               for a in synthetic.arms]
    for ax, arm in zip(name, synthetic.arms):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
        # The fixture's API-name score is its exact score + 0.1 (at most 1), per unit.
        by_hand = np.mean([np.minimum(1.0, np.asarray(sj.synthetic_matrix(arm, s, o, ["a", "b", "c"])) + 0.1)
                           for s in SEEDS for o in ORDERS], axis=0)
        assert np.allclose(np.asarray(ax.images[0].get_array()), by_hand)
        assert ax.images[0].get_clim() == (0, 1)
    by_position = [ax for ax in figures["rmatrix.png"].axes if ax.images]
    assert by_position[3].get_title().startswith("B: API-name R[stage][position]")
    assert "each block's accuracy after each stage" in figures["rmatrix_by_block.png"].get_suptitle()


def _outlined(ax) -> set[tuple[int, int]]:
    """(row, column) of the heatmap cells outlined as trained."""
    return {(round(r.get_y() + 0.5), round(r.get_x() + 0.5)) for r in ax.patches if r.get_label() == "_trained"}


def test_the_block_each_stage_trained_is_outlined_in_both_rows(synthetic, figures):
    # Orders a>b>c and c>b>a: stage 1 trains a or c, stage 2 b, stage 3 c or a (columns a, b, c).
    by_block = [ax for ax in figures["rmatrix_by_block.png"].axes if ax.images]
    for ax in by_block:
        assert _outlined(ax) == {(1, 0), (1, 2), (2, 1), (3, 0), (3, 2)}
    # By position the diagonal: stage k trains the block each unit trains k-th.
    for ax in [ax for ax in figures["rmatrix.png"].axes if ax.images]:
        assert _outlined(ax) == {(1, 0), (2, 1), (3, 2)}
    assert figures["rmatrix.png"].get_suptitle().endswith(
        f"outlined in {plots.TRAINED_EDGE}: the stage that trained the block (in some unit)")


def test_rmatrix_by_position_stays_beside_it(synthetic, figures):
    axes = [ax for ax in figures["rmatrix.png"].axes if ax.images]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["block 1", "block 2", "block 3"]
    # Column k is the block each unit trained k-th: the mean over units of R[t][order[k-1]].
    matrices = [(sj.synthetic_matrix("B", s, o, ["a", "b", "c"]), o) for s in SEEDS for o in ORDERS]
    by_hand = np.mean([[[m[t][["a", "b", "c"].index(o[k])] for k in range(3)] for t in range(4)]
                       for m, o in matrices], axis=0)
    assert np.allclose(np.asarray(axes[0].images[0].get_array()), by_hand)


def test_forest_marks_the_primary_comparison(figures):
    labels = [t.get_text() for t in figures["paired_forest.png"].axes[0].get_yticklabels()]
    assert [label for label in labels if "(primary)" in label] == ["B − A: exact (primary)"]


# ---------------------------------------------------------------- loss curves


def test_loss_curves_plot_one_line_per_arm_with_the_stages_marked(synthetic, figures):
    ax = figures["loss_curves.png"].axes[0]
    assert [line.get_label() for line in _arm_lines(ax)] == synthetic.arms
    b = synthetic.loss.filter(pl.col("arm") == "B").sort("global_step")
    assert np.allclose(_arm_lines(ax)[0].get_xdata(), b["global_step"].to_numpy())
    assert np.allclose(_arm_lines(ax)[0].get_ydata(), b["loss"].to_numpy())
    assert [t.get_text().strip() for t in ax.texts] == ["stage 1", "stage 2", "stage 3"]
    assert ax.get_xlabel() == "optimizer step (counted across stages)"
    assert ax.get_title().endswith("(units with a train_log.jsonl: B 6, A@B 6, A 6)")


def test_loss_curves_are_linked_from_the_report_and_left_out_without_logs(synthetic, tmp_path):
    out = agg.write_outputs(synthetic, plots=True)
    assert "![loss curves](loss_curves.png)" in (out / "report.md").read_text()
    for seed in (0, 1):
        sj.write_job(tmp_path / "s", sj.spec_for("A", seed=seed), [[0.1] * 3] * 4, train_log=False)
    r = _result(tmp_path)
    assert "loss_curves.png" not in plots.figures(r)
    assert "loss_curves.png" not in (agg.write_outputs(r, plots=True) / "report.md").read_text()


def test_gold_token_accuracy_is_a_third_row_on_its_own_scale(synthetic):
    """Where jobs scored the gold by teacher forcing (eval.gold_likelihood), the R matrices get a third row
    of panels, coloured over the data's range: it moves by hundredths, which a 0-1 scale would hide."""
    import dataclasses

    def with_gold(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns((0.3 + 0.1 * pl.col("name")).alias("gold_token_acc"))

    result = dataclasses.replace(synthetic, rmatrix=with_gold(synthetic.rmatrix),
                                 rmatrix_blocks=with_gold(synthetic.rmatrix_blocks))
    assert plots.rmatrix_rows(synthetic.rmatrix_blocks.with_columns(pl.lit(None, pl.Float64).alias("gold_token_acc"))) \
        == list(plots.RMATRIX_METRICS)
    for build, frame, column in ((plots.rmatrix_block_figure, result.rmatrix_blocks, "block"),
                                 (plots.rmatrix_figure, result.rmatrix, "block_pos")):
        fig = build(result)
        axes = [ax for ax in fig.axes if ax.images]
        assert len(axes) == 9
        gold = axes[6:]
        values = frame["gold_token_acc"]
        low = np.floor(values.min() * 20) / 20
        scale = (low, max(np.ceil(values.max() * 20) / 20, low + 0.1))
        for ax, arm in zip(gold, synthetic.arms):
            assert ax.get_title().startswith(f"{arm}: gold-token R[stage]")
            by_hand = (frame.filter(pl.col("arm") == arm).pivot(on=column, index="stage", values="gold_token_acc",
                                                                sort_columns=True).sort("stage").drop("stage"))
            assert np.allclose(np.asarray(ax.images[0].get_array()), by_hand.to_numpy())
            assert ax.images[0].get_clim() == pytest.approx(scale)
        assert all(ax.images[0].get_clim() == (0, 1) for ax in axes[:6])
        bars = [ax.get_ylabel() for ax in fig.axes if not ax.images and ax.get_ylabel()]
        assert bars == ["accuracy (mean over units)"] * 2 + ["gold-token accuracy, teacher-forced (mean over units)"]
