"""Continual learning, from each job's accuracy matrix ``R[stage][block]`` (pure polars): per unit
BWT, forgetting (two ways: Chaudhry et al.'s, and since the block was learned) and FWT; per arm
the mean R-matrix (by position in the order and by block) and the steps, examples, tokens, FLOPs and
accuracy after the same blocks (compute.csv).

``R`` is given as a long frame, one row per unit x stage x evaluated block
(:func:`trajhpc.results.longtable.build_long_table`).
"""

from __future__ import annotations

import polars as pl

# The per-unit metrics of continual_metrics beside acc; the unit table suffixes each with its score.
CONTINUAL_METRICS = ("bwt", "forgetting_chaudhry", "forgetting_since_learned", "fwt")


def continual_metrics(long: pl.DataFrame, score: str, *, unit: str = "job_id") -> pl.DataFrame:
    """Continual-learning metrics per unit from its accuracy matrix R.

    ``long`` has one row per unit x stage x evaluated block with columns ``unit``,
    ``stage`` (0 = zero-shot, t = after training the t-th block of the order),
    ``n_stages`` (T = length of the order), ``block_pos`` (i = 1-based position of
    the block in the order, null if it is never trained) and ``score``. With b_i the
    i-th trained block and R[t][b] the score on b after stage t:

    * ``acc``   = mean over all evaluated blocks of R[T][b] (final average accuracy).
    * ``bwt``   = 1/(T-1) * sum_{i<T} (R[T][b_i] - R[i][b_i]): backward transfer,
      negative when later blocks erase what was learned (Lopez-Paz & Ranzato 2017).
    * ``forgetting_chaudhry`` = 1/(T-1) * sum_{i<T} (max_{l in 1..T-1} R[l][b_i] - R[T][b_i]):
      average forgetting as Chaudhry et al. (2018, "Riemannian Walk", eq. for f_j^k and F_k)
      define it, the best score on the block after any earlier training stage, even one
      before the block was trained. Stage 0 (the untrained model) is not a stage there.
    * ``forgetting_since_learned`` = 1/(T-1) * sum_{i<T} (max_{l in i..T-1} R[l][b_i] - R[T][b_i]):
      the drop from the block's best score once it was trained, so a score reached by
      transfer before the block was trained is not counted as something forgotten.
    * ``fwt``   = 1/(T-1) * sum_{i>=2} (R[i-1][b_i] - R[0][b_i]): forward transfer,
      gain on a block from training the earlier ones, against stage 0, the untrained
      (zero-shot) model (Lopez-Paz & Ranzato compare with a randomly initialised model).

    Null scores are skipped in the means and maxima; T = 1 (a joint curriculum trains every block in
    one stage) gives null bwt/forgetting/fwt: not applicable, never 0.
    """
    base = long.select(unit, "stage", "n_stages", "block_pos", pl.col(score).cast(pl.Float64).alias("r"))
    keys = [unit, "block_pos"]
    final = base.filter(pl.col("stage") == pl.col("n_stages"))
    acc = final.group_by(unit).agg(pl.col("r").mean().alias("acc"))
    trained = final.filter(pl.col("block_pos").is_not_null()).select(*keys, "n_stages", r_final="r")
    learned = base.filter(pl.col("stage") == pl.col("block_pos")).select(*keys, r_learned="r")
    zero = base.filter(pl.col("stage") == 0).select(*keys, r_zero="r")
    before = base.filter(pl.col("stage") == pl.col("block_pos") - 1).select(*keys, r_before="r")
    before_final = pl.col("stage") < pl.col("n_stages")
    peak = (
        base.filter((pl.col("stage") >= pl.col("block_pos")) & before_final)
        .group_by(keys)
        .agg(pl.col("r").max().alias("r_peak"))
    )
    peak_any = (
        base.filter((pl.col("stage") >= 1) & before_final).group_by(keys).agg(pl.col("r").max().alias("r_peak_any"))
    )
    per_block = (
        trained.join(learned, on=keys, how="left")
        .join(peak, on=keys, how="left")
        .join(peak_any, on=keys, how="left")
        .join(zero, on=keys, how="left")
        .join(before, on=keys, how="left")
    )
    not_last = pl.col("block_pos") < pl.col("n_stages")
    metrics = per_block.group_by(unit).agg(
        (pl.col("r_final") - pl.col("r_learned")).filter(not_last).mean().alias("bwt"),
        (pl.col("r_peak_any") - pl.col("r_final")).filter(not_last).mean().alias("forgetting_chaudhry"),
        (pl.col("r_peak") - pl.col("r_final")).filter(not_last).mean().alias("forgetting_since_learned"),
        (pl.col("r_before") - pl.col("r_zero")).filter(pl.col("block_pos") >= 2).mean().alias("fwt"),
    )
    return acc.join(metrics, on=unit, how="left").sort(unit)


# compute.csv's columns: arm, stage, units, then each cumulative count (mean per unit) from stages.csv.
COMPUTE_COUNTS = {
    "steps": "cum_steps", "examples": "cum_examples", "supervised_tokens": "cum_supervised_tokens",
    "total_tokens": "cum_total_tokens", "flops": "cum_flops",
}
COMPUTE_SCHEMA = {
    "arm": pl.String, "stage": pl.Int64, "units": pl.Int64, **dict.fromkeys(COMPUTE_COUNTS, pl.Float64),
    "total_ratio_vs_A": pl.Float64, "acc_exact": pl.Float64, "acc_exact_ci_lo": pl.Float64,
    "acc_exact_ci_hi": pl.Float64, "acc_seen_exact": pl.Float64,
    # Interpolated at the smallest final token count of any unit (units.csv): exploratory, on each arm's last stage only.
    "exploratory_exact_at_budget_supervised": pl.Float64, "exploratory_exact_at_budget_total": pl.Float64,
}


def stage_compute(stages: pl.DataFrame, units: pl.DataFrame | None = None) -> pl.DataFrame:
    """compute.csv: per arm and stage, the mean cumulative optimizer steps, examples seen, supervised
    and total tokens and training FLOPs per unit (``units``: how many units the accuracy averages;
    a count a unit did not record is left out of its mean), with the accuracy after the same blocks.

    Like with like: at the end of stage k every sequential arm has trained the same k blocks, so
    its counts and accuracy there compare without interpolating across stages (a joint arm's one
    stage trains every block). ``total_ratio_vs_A`` is the arm's mean cumulative total tokens /
    plain A's at that stage. ``exploratory_exact_at_budget_*`` is the mean over ``units`` of the
    interpolated exact @ budget, on the arm's last stage.
    """
    if stages.height == 0:
        return pl.DataFrame(schema=COMPUTE_SCHEMA)
    wanted = (*COMPUTE_COUNTS.values(), "acc_exact", "acc_seen_exact")
    long = stages.filter(pl.col("metric").is_in(wanted))
    wide = long.pivot(on="metric", index=["arm", "stage"], values="mean")
    wide = wide.with_columns(pl.lit(None, pl.Float64).alias(c) for c in wanted if c not in wide.columns)
    acc = long.filter(pl.col("metric") == "acc_exact").select(
        "arm", "stage", pl.col("ci_lo").alias("acc_exact_ci_lo"), pl.col("ci_hi").alias("acc_exact_ci_hi"),
        pl.col("n").alias("units"))
    # The reference is plain A of the same variant: "A" or "A (<variant>)" (as in summary.csv).
    variant = pl.col("arm").str.split(" (").list.get(1, null_on_oob=True)
    ref_arm = pl.when(variant.is_null()).then(pl.lit("A")).otherwise(pl.lit("A (") + variant)
    ref = wide.select(pl.col("arm").alias("ref_arm"), "stage", pl.col("cum_total_tokens").alias("ref_total"))
    ratio = pl.when(pl.col("ref_total") > 0).then(pl.col("cum_total_tokens") / pl.col("ref_total"))
    at_budget = [f"exact_at_budget_{c}" for c in ("supervised", "total")]
    if units is not None and units.height and all(c in units.columns for c in at_budget):
        last = units.group_by("arm").agg(pl.col("n_stages").max().alias("stage"), *(pl.col(c).mean() for c in at_budget))
    else:
        last = pl.DataFrame(schema={"arm": pl.String, "stage": pl.Int64, **dict.fromkeys(at_budget, pl.Float64)})
    last = last.rename({c: f"exploratory_{c}" for c in at_budget}).cast({"stage": pl.Int64})
    return (
        wide.with_columns(ref_arm.alias("ref_arm"))
        .join(ref, on=["ref_arm", "stage"], how="left")
        .join(acc, on=["arm", "stage"], how="left")
        .join(last, on=["arm", "stage"], how="left")
        .select(
            "arm", "stage", "units", *(pl.col(c).alias(name) for name, c in COMPUTE_COUNTS.items()),
            ratio.alias("total_ratio_vs_A"), "acc_exact", "acc_exact_ci_lo", "acc_exact_ci_hi", "acc_seen_exact",
            *(f"exploratory_{c}" for c in at_budget),
        )
        .cast(COMPUTE_SCHEMA)
    )


def mean_rmatrix(long: pl.DataFrame) -> pl.DataFrame:
    """arm x stage x block position: mean exact, name and teacher-forced gold-token accuracy over units
    (position 0 = never trained; gold_token_acc null where no job scored it)."""
    return (
        long.with_columns(pl.col("block_pos").fill_null(0))
        .group_by("arm", "stage", "block_pos")
        .agg(pl.col("exact").mean(), pl.col("name").mean(), pl.col("gold_token_acc").mean(),
             pl.col("job_id").n_unique().alias("units"))
        .sort("arm", "stage", "block_pos")
    )


def mean_rmatrix_by_block(long: pl.DataFrame) -> pl.DataFrame:
    """arm x stage x block (by name): mean exact, name and gold-token accuracy over units, i.e. over seeds and
    orders, so each column is one domain whatever its position in each order."""
    return (
        long.group_by("arm", "stage", "block")
        .agg(pl.col("exact").mean(), pl.col("name").mean(), pl.col("gold_token_acc").mean(),
             pl.col("job_id").n_unique().alias("units"))
        .sort("arm", "stage", "block")
    )
