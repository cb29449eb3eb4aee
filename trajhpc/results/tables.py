"""The pure tables of an aggregate: the long table, units, per-arm summaries, paired differences.

Everything here maps polars frames to polars frames (and numpy matrices for the bootstrap);
reading job directories is :mod:`trajhpc.results.jobrecords`, writing is :mod:`trajhpc.results.aggregate`.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from trajhpc.job.scoring import SCORE_KEYS
from trajhpc.jobdir.documents import OK
from trajhpc.results import families, itemtables, stats, traineval
from trajhpc.results.continual import (
    CONTINUAL_METRICS,
    continual_metrics,
    mean_rmatrix,
    mean_rmatrix_by_block,
    stage_compute,
)
from trajhpc.results.jobrecords import (
    PARAMS_SCHEMA,
    JobRecord,
    arm_order,
    jobs_frame,
    pair_direction,
    params_frame,
)
from trajhpc.results.longtable import build_long_table, own_rows
from trajhpc.results.losscurves import TrainLogs, loss_frame, loss_notes
from trajhpc.results.studyresult import StudyResult
from trajhpc.study.comparison import DEFAULT_ANALYSIS, ITEM, PAIRED_METRICS, SIGN_FLIP, Analysis
from trajhpc.study.manifest import Manifest

# Unit-level metrics summarised per arm (mean, sd, bootstrap CI).
SUMMARY_METRICS = (
    *SCORE_KEYS,  # averaged over blocks into a unit's final score
    *(f"{m}_{score}" for score in ("exact", "name") for m in CONTINUAL_METRICS),
    # Teacher-forced (eval.gold_likelihood): final gold-token accuracy and its continual metrics;
    # n = 0 (every value null) in a study that did not score it.
    "gold_token_acc", *(f"{m}_gold_token_acc" for m in CONTINUAL_METRICS),
    "supervised_tokens", "total_tokens", "padded_tokens", "flops",
    "exact_per_m_supervised",
    # Final accuracy pooled over examples beside the mean over blocks (= exact, name).
    "exact_pooled", "exact_macro", "name_pooled", "name_macro",
    # ToolSearcher calls scored by the tool their keywords retrieve (trajhpc.results.retrieval).
    "exact_retrieval",
)
TOKEN_METRICS = ("supervised_tokens", "total_tokens", "padded_tokens", "flops")
# Metrics compared between arms on units matched by (seed, order): PAIRED_METRICS, defined in
# trajhpc.study.comparison, where the manifest's analysis is checked against them.
# Per-stage curves summarised per arm x stage.
# The interpolated exact @ budget (exact_at_budget_*) stays in units.csv and compute.csv, labelled
# exploratory: it reads an arm with longer prompts before it has trained its last block.
STAGE_METRICS = (
    "acc_exact", "acc_name", "acc_seen_exact", "acc_seen_name", "cum_supervised_tokens", "cum_total_tokens",
    "cum_steps", "cum_examples", "cum_flops",
)

def _label_variants(long: pl.DataFrame) -> pl.DataFrame:
    """Arms are split by variant only when a study mixes settings; the label then carries the hash."""
    if long.height == 0 or long["variant"].n_unique() <= 1:
        return long
    return long.with_columns((pl.col("arm") + " (" + pl.col("variant") + ")").alias("arm"))


def unit_table(
    long: pl.DataFrame, params: pl.DataFrame | None = None, budgets: dict[str, float | None] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, float | None]]:
    """Per job (unit): final scores, continual metrics, tokens, FLOPs and accuracy at the token budget.

    Returns (units, curves, budgets): ``curves`` has one row per unit x stage with
    the mean over blocks (``acc_exact``, ``acc_name``), the mean over blocks trained
    so far (``acc_seen_exact``, ``acc_seen_name``) and cumulative tokens. ``budgets``
    (supervised, total) default to the smallest final cumulative count of any unit,
    so no unit is extrapolated.
    """
    keys = ["job_id", "arm", "variant", "condition", "seed", "order", "n_stages", "model"]
    seen = pl.col("block_pos").is_not_null() & (pl.col("block_pos") <= pl.col("stage"))
    curves = (
        long.group_by(*keys, "stage")
        .agg(
            pl.col("exact").mean().alias("acc_exact"),
            pl.col("name").mean().alias("acc_name"),
            pl.col("exact").filter(seen).mean().alias("acc_seen_exact"),
            pl.col("name").filter(seen).mean().alias("acc_seen_name"),
            pl.col("cum_supervised_tokens").first(),
            pl.col("cum_total_tokens").first(),
            pl.col("cum_padded_tokens").first(),
            pl.col("cum_steps").first(),
            pl.col("cum_examples").first(),
        )
        .sort("job_id", "stage")
    )
    final = (
        long.filter(pl.col("stage") == pl.col("n_stages"))
        .group_by(keys)
        .agg(
            *(pl.col(s).mean() for s in (*SCORE_KEYS, "gold_token_acc")),
            pl.col("cum_supervised_tokens").first().alias("supervised_tokens"),
            pl.col("cum_total_tokens").first().alias("total_tokens"),
            pl.col("cum_padded_tokens").first().alias("padded_tokens"),
        )
    )
    units = final
    for score in ("exact", "name", "gold_token_acc"):
        if long[score].null_count() == long.height:  # never scored (gold_token_acc without eval.gold_likelihood)
            units = units.with_columns(pl.lit(None, pl.Float64).alias(f"{m}_{score}") for m in CONTINUAL_METRICS)
            continue
        cl = continual_metrics(long, score).drop("acc")
        cl = cl.rename({m: f"{m}_{score}" for m in CONTINUAL_METRICS})
        units = units.join(cl, on="job_id", how="left")
    budgets = dict(budgets or {})
    for count in ("supervised", "total"):
        if budgets.get(count) is None:
            budgets[count] = float(units[f"{count}_tokens"].min()) if units.height else None
        if budgets[count] is None:
            units = units.with_columns(pl.lit(None, pl.Float64).alias(f"exact_at_budget_{count}"))
            continue
        curve = curves.with_columns(pl.lit(budgets[count]).alias("_budget"))
        at = stats.value_at_budget(curve, x=f"cum_{count}_tokens", y="acc_exact", budget="_budget")
        units = units.join(at.rename({"value": f"exact_at_budget_{count}"}), on="job_id", how="left")
    if params is None:
        params = pl.DataFrame(schema=PARAMS_SCHEMA)
    # Training FLOPs per computed token (padding included): forward 2N and input
    # gradients 2N through every weight, plus 2N weight gradients for the LoRA ones only:
    # (4 N_base + 6 N_lora). Null when the parameter counts are unknown.
    computed = pl.coalesce("padded_tokens", "total_tokens")
    per_million = pl.col("exact") / (pl.col("supervised_tokens") / 1e6)
    per_token = 4 * pl.col("params_base") + 6 * pl.col("params_trainable")
    units = units.join(params, on="job_id", how="left").with_columns(
        (per_token * computed).alias("flops"),
        pl.when(pl.col("supervised_tokens") > 0).then(per_million).alias("exact_per_m_supervised"),
    )
    curves = curves.join(params, on="job_id", how="left").with_columns(
        (per_token * pl.coalesce("cum_padded_tokens", "cum_total_tokens")).alias("cum_flops")
    ).drop(params.columns[1:])
    return units.sort("arm", "seed", "order", "job_id"), curves, budgets


def _matrix(frame: pl.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Columns as a float matrix with NaN for nulls."""
    if not columns:
        return np.empty((frame.height, 0))
    return frame.select(pl.col(c).cast(pl.Float64).fill_null(float("nan")) for c in columns).to_numpy()


_EST_SCHEMA = {"mean": pl.Float64, "sd": pl.Float64, "ci_lo": pl.Float64, "ci_hi": pl.Float64, "n": pl.Int64}


def _estimates_frame(keys: dict[str, list[Any]], estimates: Sequence[stats.Estimate]) -> pl.DataFrame:
    """Key columns beside mean, sd, ci_lo, ci_hi, n."""
    values = {
        "mean": [e.mean for e in estimates], "sd": [e.sd for e in estimates],
        "ci_lo": [e.lo for e in estimates], "ci_hi": [e.hi for e in estimates], "n": [e.n for e in estimates],
    }
    schema = {k: pl.Int64 if k == "stage" else pl.String for k in keys}
    return pl.DataFrame({**keys, **values}, schema={**schema, **_EST_SCHEMA})


def _arm_matrices(
    units: pl.DataFrame, curves: pl.DataFrame, listed: Sequence[str] = ()
) -> tuple[list[str], list[np.ndarray], dict[str, list[str]]]:
    """Per arm (in :func:`arm_order`): the units x (unit metrics, stage metrics) matrix, rows in
    job id order, and its stage columns."""
    arms = arm_order(units["arm"].to_list(), listed)
    matrices, stage_cols = [], {}
    for arm in arms:
        sub = units.filter(pl.col("arm") == arm).sort("job_id")
        arm_curves = curves.filter(pl.col("arm") == arm)
        wide = arm_curves.pivot(on="stage", index="job_id", values=list(STAGE_METRICS), separator="|")
        wide = sub.select("job_id").join(wide, on="job_id", how="left").sort("job_id")  # rows = units, same order
        stage_cols[arm] = [f"{m}|{t}" for m in STAGE_METRICS for t in sorted(arm_curves["stage"].unique())]
        matrices.append(np.hstack([_matrix(sub, SUMMARY_METRICS), _matrix(wide, stage_cols[arm])]))
    return arms, matrices, stage_cols


def _summary_frames(
    arms: list[str], stage_cols: dict[str, list[str]], estimates: Sequence[Sequence[stats.Estimate]]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(summary, stages) from each arm's estimates over its :func:`_arm_matrices` columns: ``summary``
    is arm x metric with ``ratio_vs_A`` for tokens and FLOPs (arm mean / mean of plain A); ``stages``
    is arm x stage x metric."""
    k = len(SUMMARY_METRICS)
    summaries = [_estimates_frame({"arm": [], "metric": []}, [])]
    stage_parts = [_estimates_frame({"arm": [], "stage": [], "metric": []}, [])]
    for arm, est in zip(arms, estimates):
        cols = stage_cols[arm]
        keys = {"arm": [arm] * k, "metric": list(SUMMARY_METRICS)}
        summaries.append(_estimates_frame(keys, est[:k]))
        metric_stage = [c.split("|") for c in cols]
        keys = {
            "arm": [arm] * len(cols),
            "stage": [int(t) for _, t in metric_stage],
            "metric": [m for m, _ in metric_stage],
        }
        stage_parts.append(_estimates_frame(keys, est[k:]))
    # The reference is plain A of the same variant: "A" or "A (<variant>)".
    variant = pl.col("arm").str.split(" (").list.get(1, null_on_oob=True)
    ref_arm = pl.when(variant.is_null()).then(pl.lit("A")).otherwise(pl.lit("A (") + variant)
    summary = pl.concat(summaries)
    ref = summary.select(pl.col("arm").alias("ref_arm"), "metric", pl.col("mean").alias("ref_mean"))
    has_ref = pl.col("metric").is_in(TOKEN_METRICS) & (pl.col("ref_mean") > 0)
    ratio = pl.when(has_ref).then(pl.col("mean") / pl.col("ref_mean"))
    rank = {"arm": {a: i for i, a in enumerate(arms)}, "metric": {m: i for i, m in enumerate(SUMMARY_METRICS)}}
    summary = (
        summary.with_columns(ref_arm.alias("ref_arm"))
        .join(ref, on=["ref_arm", "metric"], how="left")
        .with_columns(ratio.alias("ratio_vs_A"))
        .drop("ref_arm", "ref_mean")
        .sort(*(pl.col(c).replace_strict(r, return_dtype=pl.Int64) for c, r in rank.items()))  # joins may reorder
    )
    return summary, in_arm_order(pl.concat(stage_parts), arms, "metric", "stage")


def in_arm_order(frame: pl.DataFrame, arms: Sequence[str], *by: str) -> pl.DataFrame:
    """``frame`` sorted by arm in the order of ``arms`` (arms not in it last), then by ``by``."""
    rank = pl.col("arm").replace_strict({a: i for i, a in enumerate(arms)}, default=len(arms), return_dtype=pl.Int64)
    return frame.sort(rank, "arm", *by)


def compare_arms(
    units: pl.DataFrame, *, resamples: int = stats.RESAMPLES, seed: int = stats.SEED, listed: Sequence[str] = (),
    analysis: Analysis = DEFAULT_ANALYSIS,
) -> pl.DataFrame:
    """Paired differences ``arm - baseline`` on units matched by (seed, order), for every pair of arms
    (rows in the arms' display order; direction: :func:`trajhpc.results.jobrecords.pair_direction`).

    Per comparison x metric: pairs, mean difference, sd, bootstrap CI, and the
    two-sided sign-flip permutation p-value (``p_exact``: all patterns enumerated).
    An arm with two units of one (seed, order) is refused (ValueError): matching on
    (seed, order) would pair each of them with the other arm's unit, counting it twice.
    """
    pairs, diffs = _paired_diffs(units, arm_order(units["arm"].to_list(), listed), analysis)
    estimates, tests = stats.describe_and_flip([], diffs, resamples=resamples, seed=seed)
    return _paired_frame(pairs, estimates, tests, metrics=compared_metrics(units, analysis))


def compared_metrics(units: pl.DataFrame, analysis: Analysis = DEFAULT_ANALYSIS) -> tuple[str, ...]:
    """The PAIRED_METRICS paired.csv compares: those some unit has (``exact_retrieval`` needs the
    prediction files), and every metric the analysis declares, had or not (its missing pairs must show)."""
    declared = {c.metric for c in (analysis.primary, *analysis.secondary)}
    return tuple(m for m in PAIRED_METRICS if m in declared or (m in units.columns and units[m].is_not_null().any()))


def duplicate_units(units: pl.DataFrame) -> pl.DataFrame:
    """(arm, seed, order, count) of every (seed, order) with more than one unit in its arm."""
    return (
        units.group_by("arm", "seed", "order").agg(pl.len().alias("units"))
        .filter(pl.col("units") > 1)
        .sort("arm", "seed", "order")
    )


def arm_pairs(arms: Sequence[str], analysis: Analysis = DEFAULT_ANALYSIS) -> list[tuple[str, str]]:
    """(arm, baseline) of every pair of ``arms``, in their display order, each directed by
    :func:`trajhpc.results.jobrecords.pair_direction` (a declared comparison's own direction for its two arms)."""
    directions = analysis.directions()
    return [pair_direction(x, y, directions) for x, y in itertools.combinations(arms, 2)]


def _paired_diffs(
    units: pl.DataFrame, arms: Sequence[str], analysis: Analysis = DEFAULT_ANALYSIS
) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    """Every pair of arms and its (pairs x PAIRED_METRICS) differences, rows in (seed, order) order."""
    duplicated = duplicate_units(units)
    if duplicated.height:
        first = duplicated.row(0, named=True)
        raise ValueError(
            f"arm {first['arm']!r} has {first['units']} units for seed {first['seed']}, order {first['order']} "
            f"({duplicated.height} such (seed, order) in all): pairing on (seed, order) would count them twice; "
            "keep the arms apart (distinct arm names) first"
        )
    pairs = arm_pairs(arms, analysis)
    diffs = []
    for arm, baseline in pairs:
        x = units.filter(pl.col("arm") == arm).select("seed", "order", *PAIRED_METRICS)
        y = units.filter(pl.col("arm") == baseline).select("seed", "order", *PAIRED_METRICS)
        joined = x.join(y, on=["seed", "order"], how="inner", suffix="_base").sort("seed", "order")
        diffs.append(_matrix(joined, PAIRED_METRICS) - _matrix(joined, [f"{m}_base" for m in PAIRED_METRICS]))
    return pairs, diffs


def _paired_frame(
    pairs: list[tuple[str, str]],
    estimates: Sequence[Sequence[stats.Estimate]],
    tests: Sequence[tuple[list[float | None], list[bool]]],
    *,
    metrics: Sequence[str] = PAIRED_METRICS,
) -> pl.DataFrame:
    """paired.csv's unit-level rows, one per comparison and each of ``metrics``, from each pair's
    estimates and sign-flip tests (:func:`trajhpc.results.stats.describe_and_flip`)."""
    cols: dict[str, list[Any]] = {k: [] for k in _PAIRED_SCHEMA}
    for (arm, baseline), est, (pvals, exact) in zip(pairs, estimates, tests):
        for j, metric in enumerate(PAIRED_METRICS):
            e = est[j]
            if metric not in metrics:
                continue
            for key, value in zip(cols, (arm, baseline, metric, e.n, e.mean, e.sd, e.lo, e.hi, pvals[j], exact[j])):
                cols[key].append(value)
    return pl.DataFrame(cols, schema=_PAIRED_SCHEMA)


_PAIRED_SCHEMA = {
    "arm": pl.String, "baseline": pl.String, "metric": pl.String, "pairs": pl.Int64, "mean_diff": pl.Float64,
    "sd": pl.Float64, "ci_lo": pl.Float64, "ci_hi": pl.Float64, "p_value": pl.Float64, "p_exact": pl.Boolean,
}


def analyze_study(
    study: str,
    folder: Path,
    records: Sequence[JobRecord],
    *,
    budgets: dict[str, float | None] | None = None,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
    items: pl.DataFrame | None = None,
    manifest: Manifest | None = None,
    train_logs: TrainLogs | None = None,
    recorded: Sequence[tuple[dict[str, Any], int]] = (),
) -> StudyResult:
    """All statistics of one study folder (pure apart from the already-read records and ``items``,
    the jobs' final prediction rows from :func:`read_items`).

    The study's ``manifest`` (:func:`trajhpc.results.jobrecords.study_manifest`), when known, orders
    the arms of every table as its ``conditions`` list them, and its ``analysis`` declares the
    primary and secondary comparisons of ``paired.csv`` (default: B - A in final exact accuracy,
    no secondary). ``recorded`` are the analyses ``submit`` recorded
    (:func:`trajhpc.results.jobrecords.recorded_analyses`), checked against the one applied.
    ``train_logs`` (:func:`trajhpc.results.jobrecords.read_logs`) give the loss curves per arm.
    """
    every = _label_variants(build_long_table(records))
    result = StudyResult(study, folder, jobs_frame(records), every, resamples=resamples, seed=seed)
    long = own_rows(every)
    if manifest is not None:
        result.listed_arms, result.manifest = tuple(manifest.arms()), manifest.source
        result.primary, result.secondary = manifest.analysis.primary, manifest.analysis.secondary
        result.primary_declared = manifest.written("analysis.primary")
    families.check_preregistration(result, recorded)
    listed_arms = result.listed_arms
    if long.height == 0:
        return result
    units, curves, result.budgets = unit_table(long, params_frame(records), budgets)
    units = units.join(itemtables.pooled_units(long), on="job_id", how="left")
    if items is not None and "exact_retrieval" in items.columns:
        units = units.join(itemtables.retrieval_units(items), on="job_id", how="left")
    else:
        units = units.with_columns(pl.lit(None, pl.Float64).alias("exact_retrieval"))
    result.units = units = in_arm_order(units, arm_order(units["arm"].to_list(), listed_arms), "seed", "order", "job_id")
    # One pass of the generator for the arms' and the paired differences' bootstraps and the
    # sign-flip tests: samples of one size share their resample indices, and every size and
    # test reads the same stream (stats.describe_and_flip), whichever table they feed.
    arms, matrices, stage_cols = _arm_matrices(units, curves, listed_arms)
    pairs, diffs = _paired_diffs(units, arms, result.analysis)
    estimates, tests = stats.describe_and_flip(matrices, diffs, resamples=resamples, seed=seed)
    result.summary, result.stages = _summary_frames(arms, stage_cols, estimates[: len(arms)])
    result.paired = _paired_frame(pairs, estimates[len(arms) :], tests,
                                  metrics=compared_metrics(units, result.analysis))
    te = {"resamples": resamples, "seed": seed}
    result.train_eval = traineval.train_eval_frame(every, units, arms, **te)
    result.train_eval_paired = traineval.train_eval_paired_frame(
        every, units, arms, **te, declared=result.analysis.directions())
    result.rmatrix = in_arm_order(mean_rmatrix(long), arms, "stage", "block_pos")
    result.rmatrix_blocks = in_arm_order(mean_rmatrix_by_block(long), arms, "stage", "block")
    if train_logs is not None:
        result.loss = in_arm_order(loss_frame(train_logs.rows, units), arms, "global_step")
        result.notes += loss_notes(train_logs, units.height)
    result.compute = in_arm_order(stage_compute(result.stages, units), arms, "stage")
    _add_item_tables(result, records, items, pairs)
    return result


def _add_item_tables(
    result: StudyResult, records: Sequence[JobRecord], items: pl.DataFrame | None, pairs: list[tuple[str, str]]
) -> None:
    """Pooled accuracy, strata, item-level tests, baselines and factorial effects (trajhpc.results.itemtables)."""
    result.factorial = itemtables.factorial_frame(result.units)
    specs = [r.spec for r in records if r.status == OK and r.spec is not None]
    result.baselines, note = itemtables.study_baselines(specs)
    result.notes += [note] if note else []
    if items is not None and items.height:
        items = items.join(result.units.select("job_id", "arm"), on="job_id", how="inner")
        result.strata = in_arm_order(itemtables.strata_frame(items), result.arms, "stratum", "metric")
        paired_items, notes = itemtables.items_with_ids(items)  # strata need no ids; pairing does
        result.notes += notes
        result.item_paired = itemtables.item_paired_frame(result.units, paired_items, result.arms, seed=result.seed,
                                                          pairs=pairs)


def paired_table(result: StudyResult) -> pl.DataFrame:
    """paired.csv: unit-level sign-flip rows and item-level rows, each in its family (trajhpc.results.families).

    ``family`` is ``primary`` for the study's primary comparison (``result.primary``; default
    B - A in final exact accuracy), sign-flip over units, left unadjusted; ``secondary`` for
    the rows the manifest's ``analysis.secondary`` declares, Holm-adjusted among themselves
    only; ``exploratory`` for every other row, unadjusted (``p_holm`` empty). ``primary`` is
    ``family == "primary"``.
    """
    if result.paired.width == 0:  # a study without ok jobs
        return result.paired
    analysis = result.analysis
    unit = result.paired.with_columns(
        pl.lit(SIGN_FLIP).alias("test"),
        pl.when(pl.col("p_exact")).then(pl.lit("exact")).otherwise(pl.lit("monte-carlo")).alias("p_kind"),
        pl.when(pl.col("p_exact")).then(pl.lit(None, pl.Int64)).otherwise(pl.lit(result.resamples)).alias("draws"),
        families.family(analysis, SIGN_FLIP),
    )
    items = result.item_paired
    if items.height:
        unit = pl.concat([unit, items.with_columns(families.family(analysis, ITEM))], how="diagonal_relaxed")
    frame = unit.select(pl.exclude("family"), (pl.col("family") == "primary").alias("primary"), "family")
    return frame.with_columns(families.holm_within_secondary(frame))
