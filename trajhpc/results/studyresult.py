"""What `trajhpc aggregate` computes for one study folder, as one value the report renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from trajhpc.results import stats
from trajhpc.results.jobrecords import arm_order
from trajhpc.study.comparison import DEFAULT_PRIMARY, Analysis, Primary, Secondary

OUTPUT_DIR = "aggregate"


@dataclass
class StudyResult:
    """Everything computed for one study folder; frames are written as CSV/Parquet."""

    study: str
    folder: Path
    jobs: pl.DataFrame  # every job directory with its status
    long: pl.DataFrame  # ok jobs only
    units: pl.DataFrame = field(default_factory=pl.DataFrame)  # one row per ok job
    summary: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x metric
    stages: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x stage x metric
    paired: pl.DataFrame = field(default_factory=pl.DataFrame)  # comparison x metric
    rmatrix: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x stage x block position
    compute: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x stage: tokens and accuracy, like with like
    rmatrix_blocks: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x stage x block (name)
    loss: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x global step: mean training loss
    # Training crossed with evaluation (trajhpc.results.traineval): empty without eval.also_under.
    train_eval: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x eval condition x metric
    train_eval_paired: pl.DataFrame = field(default_factory=pl.DataFrame)  # paired differences across it
    # Example-level tables (trajhpc.results.itemtables): empty when the jobs' predictions are not read.
    item_paired: pl.DataFrame = field(default_factory=pl.DataFrame)  # comparison x metric x item-level test
    strata: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x stratum x metric
    baselines: pl.DataFrame = field(default_factory=pl.DataFrame)  # baseline x block x metric
    factorial: pl.DataFrame = field(default_factory=pl.DataFrame)  # effect x metric
    ceiling: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x split: the data's ceiling (results.ceilings)
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why
    budgets: dict[str, float | None] = field(default_factory=dict)
    resamples: int = stats.RESAMPLES
    seed: int = stats.SEED
    # From the study's manifest (trajhpc.results.jobrecords.study_manifest), when it was found:
    listed_arms: tuple[str, ...] = ()  # its conditions' arms, in its order
    primary: Primary = DEFAULT_PRIMARY  # its analysis.primary (default B − A, exact)
    secondary: tuple[Secondary, ...] = ()  # its analysis.secondary: Holm's family (default none)
    primary_declared: bool = False  # whether the manifest sets analysis.primary (else the default)
    manifest: str | None = None  # where it was read from
    # Pre-registration (trajhpc.results.families): the analyses `submit` recorded in the jobs'
    # submission.json, each with how many jobs recorded it, and whether the one applied differs.
    recorded_analyses: tuple[tuple[dict[str, Any], int], ...] = ()
    analysis_changed: bool = False

    @property
    def arms(self) -> list[str]:
        """The arms with complete units, in the manifest's order (then the others)."""
        return arm_order(self.units["arm"].unique().to_list(), self.listed_arms) if self.units.height else []

    @property
    def analysis(self) -> Analysis:
        """The analysis applied: the manifest's (defaults filled), or the default."""
        return Analysis(primary=self.primary, secondary=self.secondary)
