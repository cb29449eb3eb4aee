"""The PNG plots of an aggregate (matplotlib Agg, no pyplot state, no display needed).

Each plot is built as a matplotlib ``Figure`` by a function of the :class:`StudyResult`
alone (:func:`figures`), so tests read what a figure shows (axis limits, one line per
arm, labels, heatmap values) before :func:`write_plots` saves it. What a reader can trust:

- accuracy axes start at 0 and end at 1, or just above the data when it stays below 0.5;
- every arm has its own colour, marker and line style, and per-stage points are dodged
  sideways a little, so arms that coincide stay visible;
- CI bands are shaded with visible edges; an arm whose band has zero width (its units
  agree) or no band (one unit) is said so in the legend;
- titles carry n, the units per arm (seeds x orders).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from trajhpc.core.atomic import atomic_write_bytes
from trajhpc.results.report import METRIC_LABELS, curve_of
from trajhpc.results.studyresult import StudyResult

PLOT_FILES = (
    "accuracy_by_stage.png", "accuracy_vs_tokens.png", "rmatrix.png", "rmatrix_by_block.png", "paired_forest.png",
    "loss_curves.png",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
DODGE = 0.08  # stages between neighbouring arms' points on a stage axis
TOLERANCE = 1e-12


# ---------------------------------------------------------------- figure plumbing


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0, nrows: int = 1):
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).flat)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def arm_style(result: StudyResult, arm: str) -> dict[str, Any]:
    """Colour, marker, line style and marker fill of an arm, the same in every plot."""
    from matplotlib import colormaps

    i = result.arms.index(arm) if arm in result.arms else len(result.arms)
    color = colormaps["tab10"](i % 10)
    return {
        "color": color, "marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
        # Every other arm hollow, so two markers on one spot both show.
        "markerfacecolor": color if i % 2 == 0 else "white", "markeredgecolor": color,
    }


def accuracy_limits(values: Sequence[float | None]) -> tuple[float, float]:
    """(0, 1), or (0, the data's maximum padded to the next 0.1) when every value stays below 0.5."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    top = max(finite, default=1.0)
    if top >= 0.5:
        return 0.0, 1.0
    return 0.0, max(0.1, math.ceil((top + 0.05) * 10 - TOLERANCE) / 10)


def units_text(result: StudyResult, arm: str | None = None) -> str:
    """``n = 6 (3 seeds × 2 orders)`` for one arm, or for every arm when they agree (else per arm)."""
    units = result.units

    def one(sub: pl.DataFrame) -> str:
        seeds, orders = sub["seed"].n_unique(), sub["order"].n_unique()
        grid = f"{seeds} seed{'s' * (seeds != 1)} × {orders} order{'s' * (orders != 1)}"
        missing = seeds * orders - sub.height
        return f"n = {sub.height} ({grid}{f', {missing} missing' if missing > 0 else ''})"

    if arm is not None:
        return one(units.filter(pl.col("arm") == arm))
    texts = {a: one(units.filter(pl.col("arm") == a)) for a in result.arms}
    if len(set(texts.values())) == 1:
        return f"{next(iter(texts.values()))} per arm"
    return "; ".join(f"{a}: {t}" for a, t in texts.items())


def _band_caption(widths: dict[str, str]) -> str:
    """Legend text of the shaded bands, naming arms whose band has zero width or is absent."""
    text = "shaded: 95% bootstrap CI over units"
    zero = [a for a, w in widths.items() if w == "zero"]
    none = [a for a, w in widths.items() if w == "none"]
    if zero:
        text += f"\nzero width for {', '.join(zero)} (units agree at every point)"
    if none:
        text += f"\nno CI for {', '.join(none)} (fewer than 2 units)"
    return text


def _curve(ax, result: StudyResult, arm: str, x: np.ndarray, curve: pl.DataFrame) -> str:
    """An arm's mean line with markers and its CI band; returns the band's width: wide, zero or none."""
    style = arm_style(result, arm)
    mean = curve["mean"].fill_null(float("nan")).to_numpy()
    lo, hi = (curve[c].fill_null(float("nan")).to_numpy() for c in ("ci_lo", "ci_hi"))
    # Not clipped: a point at accuracy 0 shows whole on the axis, not half a marker.
    ax.plot(x, mean, label=arm, linewidth=1.6, markersize=6, zorder=3, clip_on=False, **style)
    ax.fill_between(x, lo, hi, color=style["color"], alpha=0.18, linewidth=0, zorder=1)
    for edge in (lo, hi):
        ax.plot(x, edge, color=style["color"], linewidth=0.6, alpha=0.6, linestyle=style["linestyle"],
                label="_ci_edge", zorder=2)
    known = ~np.isnan(lo) & ~np.isnan(hi)
    if not known.any():
        return "none"
    return "zero" if np.all(hi[known] - lo[known] <= TOLERANCE) else "wide"


def _legend(ax, widths: dict[str, str]) -> None:
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    caption = _band_caption(widths)
    ax.legend([*handles, Patch(color="grey", alpha=0.25)], [*labels, caption], fontsize=8)


# ---------------------------------------------------------------- the figures


def stages_figure(result: StudyResult):
    """Exact and API-name accuracy after each stage, one line per arm, CI bands, dodged points."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(2)
    arms = result.arms
    for ax, metric, title in zip(axes, ("acc_exact", "acc_name"), ("exact", "API name")):
        widths, values = {}, []
        for i, arm in enumerate(arms):
            curve = curve_of(result.stages, arm, metric)
            dodge = (i - (len(arms) - 1) / 2) * DODGE
            widths[arm] = _curve(ax, result, arm, curve["stage"].to_numpy() + dodge, curve)
            values += curve["ci_hi"].to_list() + curve["mean"].to_list()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(*accuracy_limits(values))
        ax.set(xlabel="stage (blocks trained; 0 = before training)", ylabel=f"{title} accuracy (mean over blocks)",
               title=f"{title} accuracy after each stage")
        _legend(ax, widths)
    fig.suptitle(f"{result.study}: {units_text(result)}")
    return fig


def tokens_figure(result: StudyResult):
    """Exact accuracy against cumulative supervised and total tokens, the common budget marked."""
    fig, axes = _figure(2)
    for ax, count in zip(axes, ("supervised", "total")):
        widths, values = {}, []
        for arm in result.arms:
            x = curve_of(result.stages, arm, f"cum_{count}_tokens")["mean"].to_numpy()
            curve = curve_of(result.stages, arm, "acc_exact")
            widths[arm] = _curve(ax, result, arm, x, curve)
            values += curve["ci_hi"].to_list() + curve["mean"].to_list()
        if result.budgets.get(count) is not None:
            ax.axvline(result.budgets[count], color="grey", linestyle="--", label="budget (equal compute)")
        ax.set_ylim(*accuracy_limits(values))
        ax.set(xlabel=f"cumulative {count} tokens (mean over units)", ylabel="exact accuracy (mean over blocks)",
               title=f"accuracy vs {count} tokens")
        _legend(ax, widths)
    fig.suptitle(f"{result.study}: {units_text(result)}")
    return fig


TRAINED_EDGE = "red"  # the outline of a cell whose block its stage trained


def _heatmap(ax, grid: pl.DataFrame, labels: Callable[[str], str], trained: set[tuple[int, str]] = frozenset(),
             scale: tuple[float, float] = (0.0, 1.0)) -> Any:
    """``grid`` (a ``stage`` column, then one column per block) as a heatmap with its values written in;
    the cells in ``trained`` ((stage, column name)) outlined; colours span ``scale``."""
    from matplotlib.patches import Rectangle

    cols = [c for c in grid.columns if c != "stage"]
    data = grid.select(cols).to_numpy().astype(float)
    image = ax.imshow(data, vmin=scale[0], vmax=scale[1], cmap="viridis", aspect="auto")
    middle = (scale[0] + scale[1]) / 2
    ax.set_xticks(range(len(cols)), [labels(c) for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(grid.height), [str(t) for t in grid["stage"]])
    size = 8 if data.size <= 36 else 6
    for (i, j), v in np.ndenumerate(data):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < middle else "black",
                    fontsize=size)
    stages = grid["stage"].to_list()
    for stage, col in sorted(trained):
        if stage in stages and col in cols:
            ax.add_patch(Rectangle((cols.index(col) - 0.5, stages.index(stage) - 0.5), 1, 1, fill=False,
                                   edgecolor=TRAINED_EDGE, linewidth=1.8, label="_trained"))
    return image


def trained_cells(result: StudyResult, arm: str, column: str) -> set[tuple[int, str]]:
    """(stage, block or position as text) of the R-matrix cells whose block that stage trained, in any
    unit of ``arm`` (``block_pos`` is the stage that trains the block)."""
    long = result.long
    if long.height == 0 or column not in long.columns:
        return set()
    rows = long.filter((pl.col("arm") == arm) & (pl.col("block_pos") == pl.col("stage"))).select("stage", column)
    return {(int(stage), str(value)) for stage, value in rows.unique().iter_rows()}


def rmatrix_figure(result: StudyResult):
    """Per arm: mean R[stage][block position], a row per metric (:func:`rmatrix_rows`); position in each
    unit's order, 0 = never trained."""
    return _rmatrix_figure(
        result, result.rmatrix, "block_pos", lambda c: "untrained" if c == "0" else f"block {c}",
        xlabel="block (position in order)", what="R[stage][position]",
        suptitle="by position: column k is the block each unit trained k-th (a different domain per order)",
    )


def rmatrix_block_figure(result: StudyResult):
    """Per arm: mean R[stage][block] by block name, a row per metric (:func:`rmatrix_rows`), the mean
    over orders taken per domain."""
    return _rmatrix_figure(
        result, result.rmatrix_blocks, "block", str, xlabel="block (domain)", what="R[stage][block]",
        suptitle="by domain: mean over seeds and orders of each block's accuracy after each stage",
    )


RMATRIX_METRICS = (("exact", "exact"), ("name", "API-name"))  # (column of the R-matrix table, title word)
# Drawn as a third row where the jobs scored it (eval.gold_likelihood), on its own colour scale:
# it moves by hundredths, which a 0-1 scale would hide.
GOLD_METRIC = ("gold_token_acc", "gold-token")


def rmatrix_rows(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """The metrics an R-matrix figure draws, one row each: exact, API name, and the teacher-forced
    gold-token accuracy when some job scored it."""
    gold = GOLD_METRIC[0] in frame.columns and frame[GOLD_METRIC[0]].drop_nulls().len() > 0
    return [*RMATRIX_METRICS, *([GOLD_METRIC] if gold else [])]


def _row_scale(frame: pl.DataFrame, metric: str) -> tuple[float, float]:
    """0-1 for the accuracies a model may reach anywhere in; the data's own range (widened to 0.1 at
    least, rounded out to 0.05) for gold-token accuracy."""
    if metric != GOLD_METRIC[0]:
        return 0.0, 1.0
    values = frame[metric].drop_nulls()
    lo, hi = float(values.min()), float(values.max())
    lo, hi = math.floor(lo * 20) / 20, math.ceil(hi * 20) / 20
    return (lo, max(hi, lo + 0.1))


def _rmatrix_figure(result: StudyResult, frame: pl.DataFrame, column: str, label, *, xlabel: str, what: str,
                    suptitle: str):
    """One heatmap per arm and metric of ``frame``'s mean accuracy: a row of panels per metric (exact, then
    API name: a model that never gets the arguments right still shows its R matrix; then gold-token
    accuracy where scored: one that never names the tool right still does), a column per arm;
    in each panel rows = after stage, columns = ``column``, the cells of the block each stage trained
    outlined, so a block's rise when it is trained shows."""
    arms = result.arms
    rows = rmatrix_rows(frame)
    fig, axes = _figure(len(arms), width=4.0, height=3.8, nrows=len(rows))
    for row, (metric, word) in enumerate(rows):
        image, scale = None, _row_scale(frame, metric)
        row_axes = axes[row * len(arms):(row + 1) * len(arms)]
        for ax, arm in zip(row_axes, arms):
            r = frame.filter(pl.col("arm") == arm)
            grid = r.pivot(on=column, index="stage", values=metric, sort_columns=True).sort("stage")
            image = _heatmap(ax, grid, label, trained_cells(result, arm, column), scale)
            ax.set(xlabel=xlabel, ylabel="after stage", title=f"{arm}: {word} {what}\n{units_text(result, arm)}")
        if image is not None:
            what_bar = "gold-token accuracy, teacher-forced" if metric == GOLD_METRIC[0] else "accuracy"
            fig.colorbar(image, ax=row_axes, shrink=0.8, label=f"{what_bar} (mean over units)")
    fig.suptitle(f"{suptitle}\noutlined in {TRAINED_EDGE}: the stage that trained the block (in some unit)")
    return fig


def forest_figure(result: StudyResult):
    """Paired differences with 95% CIs, one row per comparison and metric; the primary one marked."""
    p = result.paired
    fig, (ax,) = _figure(1, width=7.0, height=0.35 * p.height + 1.4)
    primary = result.primary
    labels = []
    for arm, base, metric, lo, hi in p.select("arm", "baseline", "metric", "ci_lo", "ci_hi").rows():
        label = f"{arm} − {base}: {METRIC_LABELS[metric]}"
        if (arm, base, metric) == (primary.arm, primary.baseline, primary.metric):
            label += " (primary)"
        if lo is not None and hi is not None and hi - lo <= TOLERANCE:
            label += " [CI zero width]"
        labels.append(label)
    y = np.arange(p.height)[::-1]
    mean, lo, hi = (p[c].fill_null(float("nan")).to_numpy() for c in ("mean_diff", "ci_lo", "ci_hi"))
    # Clip float noise: a CI of identical differences can sit 1e-17 off its mean.
    ax.errorbar(mean, y, xerr=[np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)], fmt="o", capsize=3)
    ax.axvline(0, color="grey", linestyle="--")
    ax.set_yticks(y, labels)
    pairs = int(p["pairs"].max() or 0)
    ax.set(xlabel="paired mean difference [95% CI]")
    fig.suptitle(f"{result.study}: paired differences (matched on seed, order; up to {pairs} pairs)")
    return fig


def loss_figure(result: StudyResult):
    """Training loss per arm: mean over units at each optimizer step, counted across stages; stages marked."""
    loss = result.loss
    fig, (ax,) = _figure(1, width=8.0, height=4.2)
    starts: dict[str, list[tuple[int, int]]] = {}
    for arm in result.arms:
        curve = loss.filter(pl.col("arm") == arm).sort("global_step")
        if curve.height == 0:
            continue
        style = arm_style(result, arm)
        if curve.height > 60:
            style = {**style, "marker": None}
        ax.plot(curve["global_step"].to_numpy(), curve["loss"].to_numpy(), label=arm, markersize=4, **style)
        firsts = curve.group_by("stage").agg(pl.col("global_step").min()).sort("stage")
        starts[arm] = list(firsts.iter_rows())
    shared = len({tuple(s) for s in starts.values()}) == 1
    for arm, stage_starts in starts.items():
        color = "grey" if shared else arm_style(result, arm)["color"]
        for stage, first in stage_starts:
            ax.axvline(first - 0.5, color=color, linestyle=":", linewidth=0.9, label="_stage")
            ax.text(first - 0.5, 1.0, f" stage {stage}", transform=ax.get_xaxis_transform(), va="top",
                    fontsize=7, color=color)
        if shared:
            break
    units = dict(loss.group_by("arm").agg(pl.col("units").max()).iter_rows())
    counts = ", ".join(f"{a} {units[a]}" for a in result.arms if a in units)
    ax.set(xlabel="optimizer step (counted across stages)", ylabel="training loss (mean over units)",
           title=f"{result.study}: training loss per arm (units with a train_log.jsonl: {counts})")
    ax.legend(fontsize=8)
    return fig


def figures(result: StudyResult) -> dict[str, Any]:
    """File name -> Figure of every plot that applies (the forest with 2+ arms, loss curves with logs)."""
    builders: dict[str, Callable[[StudyResult], Any]] = {
        "accuracy_by_stage.png": stages_figure,
        "accuracy_vs_tokens.png": tokens_figure,
        "rmatrix.png": rmatrix_figure,
        "rmatrix_by_block.png": rmatrix_block_figure,
    }
    if result.paired.height:
        builders["paired_forest.png"] = forest_figure
    if result.loss.height:
        builders["loss_curves.png"] = loss_figure
    return {name: build(result) for name, build in builders.items()}


def write_plots(result: StudyResult, out: Path) -> list[str]:
    """Write the PNG plots into ``out``; returns their file names, in :data:`PLOT_FILES` order."""
    written = []
    for name, fig in figures(result).items():
        _save(fig, out / name)
        written.append(name)
    return written
