"""Per-stage tables of an aggregate: the R-matrix (by position in the order and by block) and
compute after the same blocks (pure polars)."""

from __future__ import annotations

import polars as pl


def stage_compute(stages: pl.DataFrame) -> pl.DataFrame:
    """compute.csv: per arm and stage, the mean cumulative tokens and accuracy after the same blocks.

    Like with like: at the end of stage k every arm has trained the same k blocks, so
    its tokens and accuracy there compare without interpolating across stages.
    ``total_ratio_vs_A`` is the arm's mean cumulative total tokens / plain A's at that stage.
    """
    wanted = ("cum_supervised_tokens", "cum_total_tokens", "acc_exact", "acc_seen_exact")
    schema = {"arm": pl.String, "stage": pl.Int64, "supervised_tokens": pl.Float64, "total_tokens": pl.Float64,
              "total_ratio_vs_A": pl.Float64, "acc_exact": pl.Float64, "acc_exact_ci_lo": pl.Float64,
              "acc_exact_ci_hi": pl.Float64, "acc_seen_exact": pl.Float64, "units": pl.Int64}
    if stages.height == 0:
        return pl.DataFrame(schema=schema)
    long = stages.filter(pl.col("metric").is_in(wanted))
    wide = long.pivot(on="metric", index=["arm", "stage"], values="mean")
    acc = long.filter(pl.col("metric") == "acc_exact").select(
        "arm", "stage", pl.col("ci_lo").alias("acc_exact_ci_lo"), pl.col("ci_hi").alias("acc_exact_ci_hi"),
        pl.col("n").alias("units"))
    # The reference is plain A of the same variant: "A" or "A (<variant>)" (as in summary.csv).
    variant = pl.col("arm").str.split(" (").list.get(1, null_on_oob=True)
    ref_arm = pl.when(variant.is_null()).then(pl.lit("A")).otherwise(pl.lit("A (") + variant)
    ref = wide.select(pl.col("arm").alias("ref_arm"), "stage", pl.col("cum_total_tokens").alias("ref_total"))
    ratio = pl.when(pl.col("ref_total") > 0).then(pl.col("cum_total_tokens") / pl.col("ref_total"))
    return (
        wide.with_columns(ref_arm.alias("ref_arm"))
        .join(ref, on=["ref_arm", "stage"], how="left")
        .join(acc, on=["arm", "stage"], how="left")
        .select(
            "arm", "stage", pl.col("cum_supervised_tokens").alias("supervised_tokens"),
            pl.col("cum_total_tokens").alias("total_tokens"), ratio.alias("total_ratio_vs_A"), "acc_exact",
            "acc_exact_ci_lo", "acc_exact_ci_hi", "acc_seen_exact", "units",
        )
        .cast(schema)
    )


def mean_rmatrix(long: pl.DataFrame) -> pl.DataFrame:
    """arm x stage x block position: mean exact and name accuracy over units (position 0 = never trained)."""
    return (
        long.with_columns(pl.col("block_pos").fill_null(0))
        .group_by("arm", "stage", "block_pos")
        .agg(pl.col("exact").mean(), pl.col("name").mean(), pl.col("job_id").n_unique().alias("units"))
        .sort("arm", "stage", "block_pos")
    )


def mean_rmatrix_by_block(long: pl.DataFrame) -> pl.DataFrame:
    """arm x stage x block (by name): mean exact and name accuracy over units, i.e. over seeds and
    orders, so each column is one domain whatever its position in each order."""
    return (
        long.group_by("arm", "stage", "block")
        .agg(pl.col("exact").mean(), pl.col("name").mean(), pl.col("job_id").n_unique().alias("units"))
        .sort("arm", "stage", "block")
    )
