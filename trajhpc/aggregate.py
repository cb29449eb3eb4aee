"""`trajhpc aggregate`: read job directories, join scores with token counts, compare arms.

I/O stays at the edges: :func:`collect_jobs` reads and validates job directories,
:func:`write_outputs` writes the results. In between everything is pure over
polars frames: :func:`build_long_table` (one row per job x stage x evaluated block)
and :func:`analyze_study` (units, per-arm summaries with bootstrap CIs, paired
differences, continual-learning metrics and compute matching).

A job that is missing, partial, corrupt, of a foreign schema or whose spec hash does
not match its id is listed with the reason and left out of every statistic.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl

from trajhpc import stats
from trajhpc.atomic import atomic_write_bytes, atomic_write_text
from trajhpc.bulk import gc_paused
from trajhpc.errors import TrajhpcError
from trajhpc.jobdir import JOB_FILES, find_job_dirs  # noqa: F401 (re-exported)
from trajhpc.jobdocs import (  # noqa: F401 (re-exported: the documents used to live here)
    CORRUPT, FOREIGN, INCOMPLETE, METRICS_SCHEMA, MISMATCH, OK, TOKENS_SCHEMA, UNREADABLE, BlockScores, JobProblem,
    MetricsDoc, MetricsStage, Resources, TokensDoc, TokenStage, read_job_docs,
)
from trajhpc.spec import JobSpec

OUTPUT_DIR = "aggregate"

# Scores averaged over blocks into a unit's final score.
SCORES = ("exact", "name", "name_excl_toolsearcher", "parse_fail", "arg_f1")
# Unit-level metrics summarised per arm (mean, sd, bootstrap CI).
SUMMARY_METRICS = (
    *SCORES,
    "bwt_exact", "forgetting_exact", "fwt_exact",
    "bwt_name", "forgetting_name", "fwt_name",
    "supervised_tokens", "total_tokens", "padded_tokens", "flops",
    "exact_per_m_supervised",
    "exact_at_budget_supervised", "exact_at_budget_total",
    # Final accuracy pooled over examples beside the mean over blocks (= exact, name).
    "exact_pooled", "exact_macro", "name_pooled", "name_macro",
)
TOKEN_METRICS = ("supervised_tokens", "total_tokens", "padded_tokens", "flops")
# Metrics compared between arms on units matched by (seed, order).
PAIRED_METRICS = ("exact", "name", "name_excl_toolsearcher", "exact_at_budget_supervised", "exact_at_budget_total")
# Per-stage curves summarised per arm x stage.
STAGE_METRICS = (
    "acc_exact", "acc_name", "acc_seen_exact", "acc_seen_name", "cum_supervised_tokens", "cum_total_tokens",
)

# Base-model size and LoRA parameters per rank (all-linear targets) of known models,
# used for FLOPs when the job did not record its parameter counts. LoRA on a d_in x d_out
# projection adds r * (d_in + d_out) parameters; summed over q, k, v, o, gate, up, down:
# SmolLM2-135M (30 layers, hidden 576, MLP 1536, KV 3 x 64): 10,176 per layer and rank;
# Llama-3.1-8B (32 layers, hidden 4096, MLP 14336, KV 8 x 128): 81,920 per layer and rank.
MODEL_PARAMS: dict[str, dict[str, float]] = {
    "smollm2-135m-instruct": {"base": 134_515_008, "lora_per_rank_all_linear": 30 * 10_176},
    "meta-llama/Llama-3.1-8B-Instruct": {"base": 8_030_261_248, "lora_per_rank_all_linear": 32 * 81_920},
}


@dataclass(frozen=True)
class JobRecord:
    """One job directory as found: its status and, when ``ok``, its validated documents."""

    path: Path
    status: str
    reason: str | None = None
    file: Path | None = None  # the file the reason is about
    spec: JobSpec | None = None
    metrics: MetricsDoc | None = None
    tokens: TokensDoc | None = None
    variant: str | None = None

    @property
    def study(self) -> str:
        return self.path.parent.name


# ---------------------------------------------------------------- discovery and reading


def resolve_targets(targets: Sequence[Path]) -> list[Path]:
    """Run roots as given; a manifest (.yaml/.yml) stands for its ``run_root/study`` folder."""
    roots = []
    for target in targets:
        target = Path(target)
        if target.is_file() and target.suffix in (".yaml", ".yml"):
            roots.append(_manifest_study_dir(target))
        elif target.is_dir():
            roots.append(target)
        elif target.exists():
            raise TrajhpcError(f"{target}: not a run root (folder) or a manifest (.yaml)")
        else:
            raise TrajhpcError(f"{target}: no such run root or manifest")
    return roots


def _manifest_study_dir(path: Path) -> Path:
    # The manifest module validates the file (errors name file, field and line);
    # a relative run_root is taken from the current folder, as `trajhpc submit` does.
    from trajhpc.manifest import load_manifest

    manifest = load_manifest(path)
    folder = Path(manifest.run_root) / manifest.study
    if not folder.is_dir():
        raise TrajhpcError(f"{folder}: no jobs yet for manifest {path} (study folder missing)")
    return folder


def collect_jobs(roots: Iterable[Path]) -> list[JobRecord]:
    """Read and validate every job directory under the roots (never raises for bad jobs)."""
    return [read_job(d) for d in find_job_dirs(roots)]


def read_job(job_dir: Path) -> JobRecord:
    """Validate one job directory against the contract; problems become a status, not an exception."""
    try:
        spec, metrics, tokens = read_job_docs(job_dir)
    except JobProblem as problem:
        return JobRecord(job_dir, problem.status, problem.reason, job_dir / problem.file)
    return JobRecord(job_dir, OK, spec=spec, metrics=metrics, tokens=tokens, variant=variant_of(spec))


# ---------------------------------------------------------------- tables


# The arm's own fields (data.tool_docs names arms too: "B+docs-dialogue") are not a variant.
_NOT_VARIANT: dict[str, Any] = {
    "condition": True, "condition_k": True, "seed": True, "order": True, "token_budget": True, "data": {"tool_docs"},
}


def variant_of(spec: JobSpec) -> str:
    """Hash of the settings other than the arm's (condition, budget, tool docs), seed and order: equal variants compare."""
    return hashlib.sha256(spec.model_dump_json(exclude=_NOT_VARIANT).encode()).hexdigest()[:6]


def jobs_frame(records: Sequence[JobRecord]) -> pl.DataFrame:
    """One row per job directory found: study, job_id, status, the reason and file when excluded, path."""
    return pl.DataFrame(
        {
            "study": [r.study for r in records],
            "job_id": [r.path.name for r in records],
            "status": [r.status for r in records],
            "reason": [r.reason for r in records],
            "file": [str(r.file) if r.file else None for r in records],
            "path": [str(r.path) for r in records],
        },
        schema=dict.fromkeys(("study", "job_id", "status", "reason", "file", "path"), pl.String),
    )


_JOB_COLUMNS = ("study", "job_id", "variant", "model", "quantization", "condition", "arm", "seed", "order", "n_stages")
_TOKEN_COLUMNS = ("examples", "supervised_tokens", "total_tokens", "padded_tokens")


def _arm_identity(spec: JobSpec) -> tuple[Any, ...]:
    budget = spec.token_budget
    return (spec.condition, spec.condition_k, budget.match if budget else None, budget.count if budget else None)


def arm_labels(records: Sequence[JobRecord]) -> dict[str, str]:
    """Job id -> arm label: ``JobSpec.arm``, made distinct where two arms that train differently share it.

    Arms that differ only by ``token_budget.count`` (A matched to B on supervised and on
    total tokens) get the count appended (``A@B:supervised``, ``A@B:total``), so they are
    summarised and paired apart instead of merged; anything else still colliding gets
    a short hash of its arm fields.
    """
    groups: dict[tuple[str, str | None], set[tuple[Any, ...]]] = {}
    ok = [r for r in records if r.status == OK and r.spec is not None]
    for r in ok:
        groups.setdefault((r.spec.arm, r.variant), set()).add(_arm_identity(r.spec))  # type: ignore[union-attr]
    labels = {}
    for r in ok:
        spec = r.spec
        assert spec is not None
        label = spec.arm
        if len(groups[(label, r.variant)]) > 1:
            counts = {identity[3] for identity in groups[(label, r.variant)]}
            same_but_count = len({identity[:3] for identity in groups[(label, r.variant)]}) == 1
            if spec.token_budget is not None and same_but_count and len(counts) == len(groups[(label, r.variant)]):
                label = f"{label}:{spec.token_budget.count}"
            else:
                label = f"{label} [{hashlib.sha256(repr(_arm_identity(spec)).encode()).hexdigest()[:6]}]"
        labels[r.path.name] = label
    return labels


def build_long_table(records: Sequence[JobRecord]) -> pl.DataFrame:
    """The tidy long table of the ``ok`` jobs: one row per job x stage x evaluated block.

    Columns: study, job_id, variant, model, condition, arm, seed, order ('a>b>c'),
    n_stages, stage, trained_block, block, block_pos (1-based position in the order,
    null if never trained), per-stage and cumulative examples/supervised/total/padded
    tokens, train_loss, the scores (n, exact, name, name_excl_toolsearcher,
    parse_fail, arg_f1) and one ``errors_<type>`` count column per error type.
    """
    # Job- and stage-level values are extended in runs; per-block scores are gathered
    # as objects and turned into columns at the end, one pass per column.
    job_cols: dict[str, list[Any]] = {k: [] for k in _JOB_COLUMNS}
    stage_cols: dict[str, list[Any]] = {k: [] for k in ("stage", "trained_block", "train_loss")}
    block_names: list[str] = []
    block_pos: list[int | None] = []
    scores: list[BlockScores] = []
    tok: dict[str, list[Any]] = {k: [] for k in ("job_id", "stage", *_TOKEN_COLUMNS)}
    labels = arm_labels(records)
    for r in records:
        spec, metrics, tokens = r.spec, r.metrics, r.tokens
        if r.status != OK or spec is None or metrics is None or tokens is None:
            continue
        job_id = r.path.name  # == spec.job_id, checked on reading
        blocks = sorted(metrics.stages[0].per_block)
        order_pos = {b: i for i, b in enumerate(spec.order, start=1)}
        positions = [order_pos.get(b) for b in blocks]
        rows = len(blocks) * len(metrics.stages)
        job_values = (
            r.study, job_id, r.variant, spec.model, spec.quantization, spec.condition, labels[job_id], spec.seed,
            ">".join(spec.order), len(spec.order),
        )
        for key, value in zip(job_cols, job_values):
            job_cols[key].extend([value] * rows)
        for stage in metrics.stages:
            for key, value in zip(stage_cols, (stage.stage, stage.trained_block, stage.train_loss)):
                stage_cols[key].extend([value] * len(blocks))
            block_names.extend(blocks)
            block_pos.extend(positions)
            scores.extend(stage.per_block[b] for b in blocks)
        for t in tokens.stages:
            values = (job_id, t.stage, t.examples, t.supervised_tokens, t.total_tokens, t.padded_tokens)
            for key, value in zip(tok, values):
                tok[key].append(value)
    fields = ("n", *SCORES)
    columns = zip(*map(attrgetter(*fields), scores)) if scores else [()] * len(fields)
    block_cols = {"block": block_names, "block_pos": block_pos, **{k: list(v) for k, v in zip(fields, columns)}}
    errors = [s.errors for s in scores]
    error_cols = {f"errors_{e}": [d.get(e) for d in errors] for e in sorted(set().union(*errors))}
    front_schema = {
        **dict(zip(_JOB_COLUMNS, (pl.String,) * 7 + (pl.Int64, pl.String, pl.Int64))),
        "stage": pl.Int64, "trained_block": pl.String, "train_loss": pl.Float64,
        "block": pl.String, "block_pos": pl.Int64,
    }
    score_schema = {"n": pl.Int64, **dict.fromkeys(SCORES, pl.Float64), **dict.fromkeys(error_cols, pl.Int64)}
    long = pl.DataFrame({**job_cols, **stage_cols, **block_cols, **error_cols}, schema={**front_schema, **score_schema})
    token_schema = {"job_id": pl.String, "stage": pl.Int64, **dict.fromkeys(_TOKEN_COLUMNS, pl.Int64)}
    cumulative = [f"cum_{c}" for c in _TOKEN_COLUMNS[1:]]
    tokens_frame = pl.DataFrame(tok, schema=token_schema).with_columns(
        pl.col(c).cum_sum().over("job_id", order_by="stage").alias(f"cum_{c}") for c in _TOKEN_COLUMNS[1:]
    )
    return (
        long.join(tokens_frame, on=["job_id", "stage"], how="left")
        .select(*front_schema, *_TOKEN_COLUMNS, *cumulative, *score_schema)
        .sort("job_id", "stage", "block")
    )


def _params(records: Sequence[JobRecord]) -> pl.DataFrame:
    """Per job: base and trainable parameter counts and where they came from (null when unknown)."""
    rows: dict[str, list[Any]] = {"job_id": [], "params_base": [], "params_trainable": [], "params_source": []}
    for r in records:
        if r.status != OK:
            continue
        assert r.spec is not None and r.metrics is not None
        res = r.metrics.resources
        base = trainable = source = None
        if res is not None and res.params_base is not None and res.params_trainable is not None:
            base, trainable, source = res.params_base, res.params_trainable, "resources"
        elif (known := MODEL_PARAMS.get(r.spec.model)) is not None and r.spec.lora.target_modules == "all-linear":
            base, source = known["base"], "model table"
            trainable = known["lora_per_rank_all_linear"] * r.spec.lora.r
        for key, value in zip(rows, (r.path.name, base, trainable, source)):
            rows[key].append(value)
    return pl.DataFrame(rows, schema=_PARAMS_SCHEMA)


_PARAMS_SCHEMA = {
    "job_id": pl.String, "params_base": pl.Float64, "params_trainable": pl.Float64, "params_source": pl.String,
}


# ---------------------------------------------------------------- analysis


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
    # Example-level tables (trajhpc.itemtables): empty when the jobs' predictions are not read.
    item_paired: pl.DataFrame = field(default_factory=pl.DataFrame)  # comparison x metric, mcnemar-cmh
    strata: pl.DataFrame = field(default_factory=pl.DataFrame)  # arm x stratum x metric
    baselines: pl.DataFrame = field(default_factory=pl.DataFrame)  # baseline x block x metric
    factorial: pl.DataFrame = field(default_factory=pl.DataFrame)  # effect x metric
    notes: list[str] = field(default_factory=list)  # what could not be computed, and why
    budgets: dict[str, float | None] = field(default_factory=dict)
    resamples: int = stats.RESAMPLES
    seed: int = stats.SEED

    @property
    def arms(self) -> list[str]:
        return arm_order(self.units["arm"].unique().to_list()) if self.units.height else []


def arm_rank(arm: str) -> tuple[int, str]:
    """Comparison order: B first, A (the stripped baseline) last, the rest alphabetical."""
    base = arm.split(" (")[0]
    return (0 if base == "B" else 2 if base == "A" else 1, arm)


def arm_order(arms: Iterable[str]) -> list[str]:
    return sorted(set(arms), key=arm_rank)


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
        )
        .sort("job_id", "stage")
    )
    final = (
        long.filter(pl.col("stage") == pl.col("n_stages"))
        .group_by(keys)
        .agg(
            *(pl.col(s).mean() for s in SCORES),
            pl.col("cum_supervised_tokens").first().alias("supervised_tokens"),
            pl.col("cum_total_tokens").first().alias("total_tokens"),
            pl.col("cum_padded_tokens").first().alias("padded_tokens"),
        )
    )
    units = final
    for score in ("exact", "name"):
        cl = stats.continual_metrics(long, score).drop("acc")
        cl = cl.rename({m: f"{m}_{score}" for m in ("bwt", "forgetting", "fwt")})
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
        params = pl.DataFrame(schema=_PARAMS_SCHEMA)
    # Training FLOPs per computed token (padding included): forward 2N and input
    # gradients 2N through every weight, plus 2N weight gradients for the LoRA ones only:
    # (4 N_base + 6 N_lora). Null when the parameter counts are unknown.
    computed = pl.coalesce("padded_tokens", "total_tokens")
    per_million = pl.col("exact") / (pl.col("supervised_tokens") / 1e6)
    units = units.join(params, on="job_id", how="left").with_columns(
        ((4 * pl.col("params_base") + 6 * pl.col("params_trainable")) * computed).alias("flops"),
        pl.when(pl.col("supervised_tokens") > 0).then(per_million).alias("exact_per_m_supervised"),
    )
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


def summarize_arms(
    units: pl.DataFrame, curves: pl.DataFrame, *, resamples: int = stats.RESAMPLES, seed: int = stats.SEED
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per arm: mean, sd, bootstrap CI and n over units of every unit metric and stage curve.

    Returns (summary, stages): ``summary`` is arm x metric with ``ratio_vs_A`` for
    tokens and FLOPs (arm mean / mean of plain A); ``stages`` is arm x stage x metric.
    """
    arms, matrices, stage_cols = _arm_matrices(units, curves)
    return _summary_frames(arms, stage_cols, stats.describe_many(matrices, resamples=resamples, seed=seed))


def _arm_matrices(
    units: pl.DataFrame, curves: pl.DataFrame
) -> tuple[list[str], list[np.ndarray], dict[str, list[str]]]:
    """Per arm: the units x (unit metrics, stage metrics) matrix, rows in job id order, and its stage columns."""
    arms = arm_order(units["arm"].to_list())
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
    return summary, pl.concat(stage_parts).sort("arm", "metric", "stage")


def compare_arms(units: pl.DataFrame, *, resamples: int = stats.RESAMPLES, seed: int = stats.SEED) -> pl.DataFrame:
    """Paired differences ``arm - baseline`` on units matched by (seed, order), for every pair of arms.

    Per comparison x metric: pairs, mean difference, sd, bootstrap CI, and the
    two-sided sign-flip permutation p-value (``p_exact``: all patterns enumerated).
    An arm with two units of one (seed, order) is refused (ValueError): matching on
    (seed, order) would pair each of them with the other arm's unit, counting it twice.
    """
    pairs, diffs = _paired_diffs(units)
    estimates = stats.describe_many(diffs, resamples=resamples, seed=seed)
    return _paired_frame(pairs, diffs, estimates, resamples=resamples, seed=seed)


def duplicate_units(units: pl.DataFrame) -> pl.DataFrame:
    """(arm, seed, order, count) of every (seed, order) with more than one unit in its arm."""
    return (
        units.group_by("arm", "seed", "order").agg(pl.len().alias("units"))
        .filter(pl.col("units") > 1)
        .sort("arm", "seed", "order")
    )


def _paired_diffs(units: pl.DataFrame) -> tuple[list[tuple[str, str]], list[np.ndarray]]:
    """Every pair of arms and its (pairs x PAIRED_METRICS) differences, rows in (seed, order) order."""
    duplicated = duplicate_units(units)
    if duplicated.height:
        first = duplicated.row(0, named=True)
        raise ValueError(
            f"arm {first['arm']!r} has {first['units']} units for seed {first['seed']}, order {first['order']} "
            f"({duplicated.height} such (seed, order) in all): pairing on (seed, order) would count them twice; "
            "keep the arms apart (distinct arm names) first"
        )
    pairs = list(itertools.combinations(arm_order(units["arm"].to_list()), 2))
    diffs = []
    for arm, baseline in pairs:
        x = units.filter(pl.col("arm") == arm).select("seed", "order", *PAIRED_METRICS)
        y = units.filter(pl.col("arm") == baseline).select("seed", "order", *PAIRED_METRICS)
        joined = x.join(y, on=["seed", "order"], how="inner", suffix="_base").sort("seed", "order")
        diffs.append(_matrix(joined, PAIRED_METRICS) - _matrix(joined, [f"{m}_base" for m in PAIRED_METRICS]))
    return pairs, diffs


def _paired_frame(
    pairs: list[tuple[str, str]],
    diffs: list[np.ndarray],
    estimates: Sequence[Sequence[stats.Estimate]],
    *,
    resamples: int,
    seed: int,
) -> pl.DataFrame:
    tests = stats.sign_flip_many(diffs, resamples=resamples, seed=seed)
    cols: dict[str, list[Any]] = {k: [] for k in _PAIRED_SCHEMA}
    for (arm, baseline), est, (pvals, exact) in zip(pairs, estimates, tests):
        for j, metric in enumerate(PAIRED_METRICS):
            e = est[j]
            for key, value in zip(cols, (arm, baseline, metric, e.n, e.mean, e.sd, e.lo, e.hi, pvals[j], exact[j])):
                cols[key].append(value)
    return pl.DataFrame(cols, schema=_PAIRED_SCHEMA)


_PAIRED_SCHEMA = {
    "arm": pl.String, "baseline": pl.String, "metric": pl.String, "pairs": pl.Int64, "mean_diff": pl.Float64,
    "sd": pl.Float64, "ci_lo": pl.Float64, "ci_hi": pl.Float64, "p_value": pl.Float64, "p_exact": pl.Boolean,
}


def mean_rmatrix(long: pl.DataFrame) -> pl.DataFrame:
    """arm x stage x block position: mean exact and name accuracy over units (position 0 = never trained)."""
    return (
        long.with_columns(pl.col("block_pos").fill_null(0))
        .group_by("arm", "stage", "block_pos")
        .agg(pl.col("exact").mean(), pl.col("name").mean(), pl.col("job_id").n_unique().alias("units"))
        .sort("arm", "stage", "block_pos")
    )


def analyze_study(
    study: str,
    folder: Path,
    records: Sequence[JobRecord],
    *,
    budgets: dict[str, float | None] | None = None,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
    items: pl.DataFrame | None = None,
) -> StudyResult:
    """All statistics of one study folder (pure apart from the already-read records and ``items``,
    the jobs' final prediction rows from :func:`read_items`)."""
    long = _label_variants(build_long_table(records))
    result = StudyResult(study, folder, jobs_frame(records), long, resamples=resamples, seed=seed)
    if long.height == 0:
        return result
    from trajhpc.itemtables import pooled_units

    units, curves, result.budgets = unit_table(long, _params(records), budgets)
    units = units.join(pooled_units(long), on="job_id", how="left").sort("arm", "seed", "order", "job_id")
    result.units = units
    # One bootstrap for the arms and the paired differences: samples of one size share
    # their resample indices (stats.describe_many), whichever table they feed.
    arms, matrices, stage_cols = _arm_matrices(units, curves)
    pairs, diffs = _paired_diffs(units)
    estimates = stats.describe_many([*matrices, *diffs], resamples=resamples, seed=seed)
    result.summary, result.stages = _summary_frames(arms, stage_cols, estimates[: len(arms)])
    result.paired = _paired_frame(pairs, diffs, estimates[len(arms) :], resamples=resamples, seed=seed)
    result.rmatrix = mean_rmatrix(long)
    _add_item_tables(result, records, items)
    return result


def _add_item_tables(result: StudyResult, records: Sequence[JobRecord], items: pl.DataFrame | None) -> None:
    """Pooled accuracy, strata, item-level tests, baselines and factorial effects (trajhpc.itemtables)."""
    from trajhpc import itemtables

    result.factorial = itemtables.factorial_frame(result.units)
    specs = [r.spec for r in records if r.status == OK and r.spec is not None]
    result.baselines, note = itemtables.study_baselines(specs)
    result.notes += [note] if note else []
    if items is not None and items.height:
        items = items.join(result.units.select("job_id", "arm"), on="job_id", how="inner")
        result.strata = itemtables.strata_frame(items)
        result.item_paired = itemtables.item_paired_frame(result.units, items, result.arms, seed=result.seed)


def paired_table(result: StudyResult) -> pl.DataFrame:
    """paired.csv: unit-level sign-flip rows and item-level McNemar rows, Holm-adjusted over all of them.

    ``primary`` marks B - A in final exact accuracy (sign-flip over units): the comparison the
    study is designed for, left unadjusted; Holm adjusts over every other (secondary) row.
    """
    from trajhpc.itemstats import holm

    if result.paired.width == 0:  # a study without ok jobs
        return result.paired
    unit = result.paired.with_columns(
        pl.lit("sign-flip").alias("test"),
        pl.when(pl.col("p_exact")).then(pl.lit("exact")).otherwise(pl.lit("monte-carlo")).alias("p_kind"),
        pl.when(pl.col("p_exact")).then(pl.lit(None, pl.Int64)).otherwise(pl.lit(result.resamples)).alias("draws"),
    )
    frame = pl.concat([unit, result.item_paired], how="diagonal_relaxed") if result.item_paired.height else unit
    primary = (pl.col("arm") == "B") & (pl.col("baseline") == "A") & (pl.col("metric") == "exact") & (
        pl.col("test") == "sign-flip")
    frame = frame.with_columns(primary.alias("primary"))
    # The primary comparison is declared in advance and tested at full level; Holm
    # adjusts the family of every other (secondary) row.
    is_primary = frame["primary"].to_list()
    secondary = holm([None if prim else p for p, prim in zip(frame["p_value"].to_list(), is_primary)])
    adjusted = [p if prim else q for p, q, prim in zip(frame["p_value"].to_list(), secondary, is_primary)]
    return frame.with_columns(pl.Series("p_holm", adjusted, dtype=pl.Float64))


# ---------------------------------------------------------------- outputs and command


def _csv(frame: pl.DataFrame) -> str:
    return frame.write_csv(float_precision=6)


def write_outputs(result: StudyResult, *, plots: bool = True) -> Path:
    """Tables, report.md and (optionally) plots into ``<study folder>/aggregate/``; returns that folder."""
    from trajhpc import report

    out = result.folder / OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    result.long.write_parquet(buf)
    atomic_write_bytes(out / "long.parquet", buf.getvalue())
    atomic_write_text(out / "long.csv", _csv(result.long))
    atomic_write_text(out / "jobs.csv", _csv(result.jobs.drop("path")))
    for name in ("units", "summary", "stages", "rmatrix", "strata", "baselines", "factorial"):
        atomic_write_text(out / f"{name}.csv", _csv(getattr(result, name)))
    atomic_write_text(out / "paired.csv", _csv(paired_table(result)))
    figures = report.write_plots(result, out) if plots and result.units.height else []
    atomic_write_text(out / "report.md", report.render_markdown(result, figures))
    return out


def group_by_study(records: Sequence[JobRecord]) -> dict[Path, list[JobRecord]]:
    """Records per study folder (the folder holding the job directories), sorted."""
    groups: dict[Path, list[JobRecord]] = {}
    for r in records:
        groups.setdefault(r.path.parent, []).append(r)
    return {k: sorted(v, key=lambda r: r.path.name) for k, v in sorted(groups.items())}


def aggregate(
    targets: Sequence[Path], *, strict: bool = False, resamples: int = stats.RESAMPLES, seed: int = stats.SEED
) -> list[StudyResult]:
    """Discover, validate and analyse every study under the targets (no files written)."""
    with gc_paused():
        return _aggregate(resolve_targets(targets), strict=strict, resamples=resamples, seed=seed)


def _aggregate(roots: Sequence[Path], *, strict: bool, resamples: int, seed: int) -> list[StudyResult]:
    records = collect_jobs(roots)
    if not records:
        where = ", ".join(str(r) for r in roots)
        raise TrajhpcError(f"no job directories (folders with spec.json) under {where}")
    bad = [r for r in records if r.status != OK]
    if strict and bad:
        first = bad[0]
        detail = (first.reason or "").split(": ", 1)[-1]  # the reason starts with the file name
        more = f" (and {len(bad) - 1} more bad jobs)" if len(bad) > 1 else ""
        raise TrajhpcError(f"{first.file}: {first.status}: {detail}{more}")
    return [
        analyze_study(folder.name, folder, recs, resamples=resamples, seed=seed, items=read_items(recs))
        for folder, recs in group_by_study(records).items()
    ]


def read_items(records: Sequence[JobRecord]) -> pl.DataFrame | None:
    """The final-stage prediction rows of the ``ok`` jobs (those whose predictions are readable)."""
    from trajhpc.itemtables import read_final_predictions

    frames = []
    for r in records:
        if r.status == OK and r.spec is not None:
            frame, _problem = read_final_predictions(r.path, len(r.spec.order), r.path.name)
            frames.append(frame)
    return pl.concat(frames) if frames else None


def aggregate_command(console: Any, targets: list[Path], *, strict: bool, plots: bool) -> list[StudyResult]:
    """CLI entry: aggregate, write every study's outputs, print a summary per study."""
    from trajhpc import report

    results = aggregate(targets, strict=strict)
    for result in results:
        try:
            out = write_outputs(result, plots=plots)
        except OSError as err:
            why = (err.strerror or str(err)).lower()
            raise TrajhpcError(f"{result.folder}: cannot write the results into {OUTPUT_DIR}/ ({why})") from None
        report.print_summary(console, result, out)
    return results
