"""The PNG plots of an aggregate (matplotlib Agg, no pyplot state, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl

from trajhpc.atomic import atomic_write_bytes
from trajhpc.report import METRIC_LABELS, curve_of
from trajhpc.results import StudyResult

PLOT_FILES = ("accuracy_by_stage.png", "accuracy_vs_tokens.png", "rmatrix.png", "paired_forest.png")


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.0):
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _band(ax, x: np.ndarray, curve: pl.DataFrame, label: str) -> None:
    """Mean line with markers and a shaded CI band (gaps where there is no CI)."""
    lo, hi = (curve[c].fill_null(float("nan")).to_numpy() for c in ("ci_lo", "ci_hi"))
    ax.plot(x, curve["mean"].to_numpy(), marker="o", label=label)
    ax.fill_between(x, lo, hi, alpha=0.2)


def _plot_stages(result: StudyResult, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(2)
    for ax, metric, title in zip(axes, ("acc_exact", "acc_name"), ("exact", "API name")):
        for arm in result.arms:
            curve = curve_of(result.stages, arm, metric)
            _band(ax, curve["stage"].to_numpy(), curve, arm)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="stage (blocks trained)", ylabel=f"{title} accuracy (mean over blocks)",
               title=f"{title} accuracy after each stage")
        ax.legend()
    _save(fig, path)


def _plot_tokens(result: StudyResult, path: Path) -> None:
    fig, axes = _figure(2)
    for ax, count in zip(axes, ("supervised", "total")):
        for arm in result.arms:
            x = curve_of(result.stages, arm, f"cum_{count}_tokens")["mean"].to_numpy()
            _band(ax, x, curve_of(result.stages, arm, "acc_exact"), arm)
        if result.budgets.get(count) is not None:
            ax.axvline(result.budgets[count], color="grey", linestyle="--", label="budget")
        ax.set(xlabel=f"cumulative {count} tokens (mean over units)", ylabel="exact accuracy",
               title=f"accuracy vs {count} tokens")
        ax.legend()
    _save(fig, path)


def _plot_rmatrix(result: StudyResult, path: Path) -> None:
    arms = result.arms
    fig, axes = _figure(len(arms), width=4.0, height=3.6)
    image = None
    for ax, arm in zip(axes, arms):
        r = result.rmatrix.filter(pl.col("arm") == arm)
        grid = r.pivot(on="block_pos", index="stage", values="exact", sort_columns=True).sort("stage")
        cols = [c for c in grid.columns if c != "stage"]
        data = grid.select(cols).to_numpy().astype(float)
        image = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), ["untrained" if c == "0" else f"block {c}" for c in cols], rotation=30)
        ax.set_yticks(range(grid.height), [str(t) for t in grid["stage"]])
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.5 else "black", fontsize=8)
        ax.set(xlabel="block (position in order)", ylabel="stage", title=f"{arm}: mean exact R[stage][block]")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
    _save(fig, path)


def _plot_forest(result: StudyResult, path: Path) -> None:
    p = result.paired
    fig, (ax,) = _figure(1, width=7.0, height=0.35 * p.height + 1.2)
    labels = [f"{a} − {b}: {METRIC_LABELS[m]}" for a, b, m in p.select("arm", "baseline", "metric").rows()]
    y = np.arange(p.height)[::-1]
    mean, lo, hi = (p[c].fill_null(float("nan")).to_numpy() for c in ("mean_diff", "ci_lo", "ci_hi"))
    # Clip float noise: a CI of identical differences can sit 1e-17 off its mean.
    ax.errorbar(mean, y, xerr=[np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)], fmt="o", capsize=3)
    ax.axvline(0, color="grey", linestyle="--")
    ax.set_yticks(y, labels)
    ax.set(xlabel="paired mean difference [95% CI]", title="paired differences (matched on seed, order)")
    _save(fig, path)


def write_plots(result: StudyResult, out: Path) -> list[str]:
    """Write the PNG plots into ``out``; returns their file names (the forest plot only with 2+ arms)."""
    plots = [_plot_stages, _plot_tokens, _plot_rmatrix] + ([_plot_forest] if result.paired.height else [])
    for plot, name in zip(plots, PLOT_FILES):
        plot(result, out / name)
    return list(PLOT_FILES[: len(plots)])
