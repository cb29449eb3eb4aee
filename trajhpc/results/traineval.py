"""Training crossed with evaluation: each arm's final scores under every condition it was evaluated under.

A job of arm X trains under X's condition and is scored under it; with ``eval.also_under`` the
same adapter is also scored on the same held-out items with prompts rendered under other
conditions (``eval_condition`` in the long table). So "trained on trajectories" and "sees the
trajectory at test" come apart:

- :func:`train_eval_frame`: rows the arm trained under, columns the condition evaluated under,
  cells the mean final exact / API-name accuracy over the arm's units with a bootstrap CI;
- :func:`train_eval_paired_frame`: paired differences on units, of two kinds. ``train``: two arms
  evaluated under one condition (e.g. train B − train A, both evaluated under B: does training on
  trajectories help a model that has the trajectory at test?), units matched by (seed, order);
  ``eval``: one arm's adapters scored under two conditions (e.g. trained A, evaluated under B − under A),
  each unit paired with itself. Both with the sign-flip p-value of :mod:`trajhpc.results.stats`,
  unadjusted and exploratory (no row joins paired.csv's families).

Pure: polars frames in, polars frames out.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
import polars as pl

from trajhpc.results import stats
from trajhpc.results.jobrecords import pair_direction
from trajhpc.spec import CONDITIONS

TRAIN_EVAL_METRICS = ("exact", "name")
TRAIN_EVAL_SCHEMA = {
    "arm": pl.String, "eval_condition": pl.String, "own": pl.Boolean, "metric": pl.String,
    "mean": pl.Float64, "sd": pl.Float64, "ci_lo": pl.Float64, "ci_hi": pl.Float64, "n": pl.Int64,
}
TRAIN_EVAL_PAIRED_SCHEMA = {
    "kind": pl.String, "arm": pl.String, "baseline": pl.String, "eval_condition": pl.String,
    "eval_baseline": pl.String, "metric": pl.String, "pairs": pl.Int64, "mean_diff": pl.Float64, "sd": pl.Float64,
    "ci_lo": pl.Float64, "ci_hi": pl.Float64, "p_value": pl.Float64, "p_exact": pl.Boolean,
}


def crossed(long: pl.DataFrame) -> bool:
    """Whether any job of the long table was evaluated under a condition other than its own."""
    return long.height > 0 and bool((long["eval_condition"] != long["condition"]).any())


def final_under(long: pl.DataFrame, job_ids: Sequence[str]) -> pl.DataFrame:
    """Per job (of ``job_ids``) and evaluation condition: final exact and name, the mean over blocks."""
    return (
        long.filter((pl.col("stage") == pl.col("n_stages")) & pl.col("job_id").is_in(list(job_ids)))
        .group_by("job_id", "arm", "seed", "order", "condition", "eval_condition")
        .agg(*(pl.col(m).mean() for m in TRAIN_EVAL_METRICS))
        .sort("job_id", "eval_condition")
    )


def _conditions(final: pl.DataFrame) -> list[str]:
    return sorted(final["eval_condition"].unique().to_list(), key=lambda c: (CONDITIONS.index(c) if c in CONDITIONS
                                                                               else len(CONDITIONS), c))


def train_eval_frame(
    long: pl.DataFrame, units: pl.DataFrame, arms: Sequence[str], *, resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
) -> pl.DataFrame:
    """arm x eval_condition x metric: mean, sd, bootstrap CI and units of the final score (``own``:
    the arm's own condition). Empty unless some job was evaluated under another condition."""
    if not crossed(long):
        return pl.DataFrame(schema=TRAIN_EVAL_SCHEMA)
    final = final_under(long, units["job_id"].to_list())
    keys: list[tuple[str, str, bool]] = []
    samples = []
    for arm in arms:
        sub = final.filter(pl.col("arm") == arm)
        own = set(sub["condition"].to_list())
        for condition in _conditions(sub):
            # In job id order, as the summary samples units: one unit set, one CI in both tables.
            cell = sub.filter(pl.col("eval_condition") == condition).sort("job_id")
            keys.append((arm, condition, condition in own))
            samples.append(cell.select(pl.col(m).cast(pl.Float64).fill_null(float("nan"))
                                       for m in TRAIN_EVAL_METRICS).to_numpy())
    estimates = stats.describe_many(samples, resamples=resamples, seed=seed)
    cols: dict[str, list[Any]] = {k: [] for k in TRAIN_EVAL_SCHEMA}
    for (arm, condition, own), est in zip(keys, estimates):
        for metric, e in zip(TRAIN_EVAL_METRICS, est):
            values = (arm, condition, own, metric, e.mean, e.sd, e.lo, e.hi, e.n)
            for key, value in zip(cols, values):
                cols[key].append(value)
    return pl.DataFrame(cols, schema=TRAIN_EVAL_SCHEMA)


def train_eval_paired_frame(
    long: pl.DataFrame, units: pl.DataFrame, arms: Sequence[str], *, resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED, declared: Sequence[tuple[str, str]] = (("B", "A"),),
) -> pl.DataFrame:
    """Paired differences across the train x eval table (see the module docstring), exact and name.

    ``train`` rows: every pair of arms (directed as paired.csv directs them) under every condition
    both were evaluated under, where at least one of them was evaluated there besides its own
    (two arms each under its own condition are paired.csv's). ``eval`` rows: every arm under every
    pair of conditions it was evaluated under (directed B first, A last).
    """
    if not crossed(long):
        return pl.DataFrame(schema=TRAIN_EVAL_PAIRED_SCHEMA)
    final = final_under(long, units["job_id"].to_list())
    metrics = list(TRAIN_EVAL_METRICS)
    keys: list[tuple[str, str, str, str, str]] = []
    diffs: list[np.ndarray] = []
    for condition in _conditions(final):
        under = final.filter(pl.col("eval_condition") == condition)
        for x, y in itertools.combinations([a for a in arms if a in set(under["arm"].to_list())], 2):
            arm, baseline = pair_direction(x, y, declared)
            a, b = (under.filter(pl.col("arm") == name) for name in (arm, baseline))
            if bool((a["condition"] == condition).all()) and bool((b["condition"] == condition).all()):
                continue
            joined = a.join(b, on=["seed", "order"], how="inner", suffix="_base").sort("seed", "order")
            keys.append(("train", arm, baseline, condition, condition))
            diffs.append(_diff(joined, metrics))
    for arm in arms:
        sub = final.filter(pl.col("arm") == arm)
        for x, y in itertools.combinations(_conditions(sub), 2):
            upper, lower = pair_direction(x, y)
            a, b = (sub.filter(pl.col("eval_condition") == c) for c in (upper, lower))
            joined = a.join(b, on="job_id", how="inner", suffix="_base").sort("seed", "order", "job_id")
            keys.append(("eval", arm, arm, upper, lower))
            diffs.append(_diff(joined, metrics))
    estimates, tests = stats.describe_and_flip([], diffs, resamples=resamples, seed=seed)
    cols: dict[str, list[Any]] = {k: [] for k in TRAIN_EVAL_PAIRED_SCHEMA}
    for key, est, (pvals, exact) in zip(keys, estimates, tests):
        for j, metric in enumerate(metrics):
            e = est[j]
            for name, value in zip(cols, (*key, metric, e.n, e.mean, e.sd, e.lo, e.hi, pvals[j], exact[j])):
                cols[name].append(value)
    return pl.DataFrame(cols, schema=TRAIN_EVAL_PAIRED_SCHEMA)


def _diff(joined: pl.DataFrame, metrics: Sequence[str]) -> np.ndarray:
    def matrix(columns: Sequence[str]) -> np.ndarray:
        return joined.select(pl.col(c).cast(pl.Float64).fill_null(float("nan")) for c in columns).to_numpy()

    return matrix(metrics) - matrix([f"{m}_base" for m in metrics])


# ---------------------------------------------------------------- report.md


def _num(x: float | None) -> str:
    if x is None:
        return "–"
    text = f"{x:.3f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def _ci(mean: float | None, lo: float | None, hi: float | None) -> str:
    return "–" if mean is None else _num(mean) + (f" [{_num(lo)}, {_num(hi)}]" if lo is not None else "")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown_section(table: pl.DataFrame, paired: pl.DataFrame) -> list[str]:
    """report.md's "Training × evaluation" section (no lines when no job was evaluated under another condition)."""
    if table.height == 0:
        return []
    arms = list(dict.fromkeys(table["arm"].to_list()))
    conditions = sorted(set(table["eval_condition"].to_list()),
                        key=lambda c: (CONDITIONS.index(c) if c in CONDITIONS else len(CONDITIONS), c))
    cell = {(r["arm"], r["eval_condition"], r["metric"]): r for r in table.to_dicts()}
    out = ["## Training × evaluation", "",
           "Final accuracy of each arm's adapters (rows: the arm trained under) scored on the same held-out items "
           "with prompts rendered under each condition (columns; `eval.also_under`), mean over units "
           "[95% bootstrap CI]; * marks the arm's own condition, the scores of every other table (train_eval.csv).", ""]
    for metric, label in (("exact", "exact"), ("name", "API name")):
        out += [f"### {label.capitalize() if label == 'exact' else label}", "",
                _row(["trained \\ evaluated", *conditions]), "|" + "|".join("---" for _ in range(len(conditions) + 1)) + "|"]
        for arm in arms:
            cells = []
            for c in conditions:
                r = cell.get((arm, c, metric))
                cells.append("" if r is None else _ci(r["mean"], r["ci_lo"], r["ci_hi"]) + (" *" if r["own"] else ""))
            out.append(_row([arm, *cells]))
        out.append("")
    if paired.height:
        out += ["Paired differences on units (train_eval_paired.csv): *train* rows compare two arms evaluated under "
                "one condition, units matched by (seed, order), so they isolate what training under a condition "
                "does for a model given that prompt at test; *eval* rows compare one arm's adapters under two "
                "conditions, each unit with itself, so they isolate what the prompt at test does for one training. "
                "Two-sided sign-flip p-values, unadjusted (exploratory).", "",
                _row(["kind", "comparison", "metric", "pairs", "mean difference [95% CI]", "p"]),
                "|---|---|---|---|---|---|"]
        for r in paired.to_dicts():
            if r["kind"] == "train":
                what = f"train {r['arm']} − train {r['baseline']}, both evaluated under {r['eval_condition']}"
            else:
                what = f"trained {r['arm']}: evaluated under {r['eval_condition']} − under {r['eval_baseline']}"
            p = "–" if r["p_value"] is None else f"{r['p_value']:.4f}" + ("" if r["p_exact"] else " (MC)")
            label = "exact" if r["metric"] == "exact" else "API name"
            out.append(_row([r["kind"], what, label, str(r["pairs"]), _ci(r["mean_diff"], r["ci_lo"], r["ci_hi"]), p]))
        out.append("")
    return out
