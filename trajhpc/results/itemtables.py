"""A study's example-level tables: pooled accuracy, strata, item-level paired tests, baselines, factorial.

Unit-level tables (trajhpc.results.aggregate) summarise one number per job. These go down to
the held-out items every job was scored on, read from each job's final
``predictions/stage-K.jsonl``:

- ``pooled_units``: per job, accuracy pooled over examples (``*_pooled``) beside the
  mean over blocks (``*_macro``, what ``exact``/``name`` are elsewhere);
- ``strata_frame``: accuracy per arm within strata of what the prompt carries
  (``target_kind``, ``gold_name_in_prompt``, ``gold_values_in_prompt``);
- ``item_paired_frame``: per pair of arms, over the (seed, order) units both arms share,
  first the item test (:func:`trajhpc.results.itemstats.item_test`: each item averaged over
  the units, dialogues sign-flipped and resampled), then the stratified McNemar test, which
  counts an item once per unit and so holds only conditional on the units;
- ``items_with_ids``: the prediction rows those tests can join on their ``item`` id;
- ``study_baselines``: the data-only baselines (trajhpc.job.baselines) on the jobs' held-out sets;
- ``factorial_frame``: the position x content effects (A, A-slots, B) and the calls x responses effects
  (A, calls-only, responses-only, B), each when its arms are present.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Sequence

import polars as pl
from pydantic import ValidationError

from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir.documents import PredictionRow, adapter
from trajhpc.jobdir.paths import FileProblem, JobDir, read_bytes
from trajhpc.results import itemstats
from trajhpc.results.factorial import factorial_rows

STRATA = ("target_kind", "gold_name_in_prompt", "gold_values_in_prompt")
ITEM_METRICS = ("exact", "name")
MAX_PREDICTION_BYTES = 256 * 2**20
_ITEM_SCHEMA = {
    "job_id": pl.String, "item": pl.String, "dialogue": pl.String, "block": pl.String,
    "exact": pl.Boolean, "name": pl.Boolean,
    "target_kind": pl.String, "gold_name_in_prompt": pl.Boolean, "gold_values_in_prompt": pl.Boolean,
    "prediction": pl.String, "gold": pl.String,
}


def read_prediction_rows(job_dir: Path, n_stages: int) -> tuple[list[PredictionRow], str | None]:
    """The final stage's prediction rows of one job scored under its own condition, validated, and why
    they could not be read ([] then; None when fine).

    ``item`` is the row's record id (``source#index``), null in files written before rows had
    one: block|dialogue_key|step is no substitute, it repeats (:func:`items_with_ids`)."""
    path = JobDir(job_dir).predictions(n_stages)
    where = f"predictions/{path.name}"
    try:
        text = read_bytes(path, max_bytes=MAX_PREDICTION_BYTES).decode("utf-8")
    except FileProblem as err:
        return [], f"{where}: {err.detail}"
    except UnicodeDecodeError:
        return [], f"{where}: corrupt: not UTF-8"
    rows: list[PredictionRow] = []
    validate = adapter(PredictionRow).validate_json
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        # Checked like metrics.json and tokens.json: a row that is not what the job writes
        # ("exact": "false", a missing field) makes the file unusable, never a guessed value.
        try:
            row = validate(line)
        except ValidationError as err:
            try:
                value = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                value = None
            if not isinstance(value, dict):
                return [], f"{where}:{number}: corrupt: not a JSON object"
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "row"
            return [], f"{where}:{number}: corrupt: {field}: {first['msg']}"
        # A row scored under another condition (eval.also_under) is not one of this arm's items.
        if row.get("eval_condition") is None:
            rows.append(row)
    if not rows:
        return [], f"{where}: corrupt: no prediction rows"
    return rows, None


# The item frame's columns after job_id, and the row field each is read from.
_ROW_FIELDS = {"item": "item", "dialogue": "dialogue_key", "block": "block", "exact": "exact", "name": "name",
               "target_kind": "target_kind", "gold_name_in_prompt": "gold_name_in_prompt",
               "gold_values_in_prompt": "gold_values_in_prompt", "prediction": "prediction", "gold": "gold"}


def item_frame(jobs: Sequence[tuple[str, Sequence[PredictionRow]]]) -> pl.DataFrame:
    """One frame (``_ITEM_SCHEMA``) of the ``(job id, rows)`` of many jobs: built once, column by column."""
    cols: dict[str, list[Any]] = {"job_id": [job for job, rows in jobs for _ in rows]}
    for column, key in _ROW_FIELDS.items():
        cols[column] = [row.get(key) for _, rows in jobs for row in rows]
    return pl.DataFrame(cols, schema=_ITEM_SCHEMA)


def read_final_predictions(job_dir: Path, n_stages: int, job_id: str) -> tuple[pl.DataFrame, str | None]:
    """:func:`read_prediction_rows` of one job as a frame (empty when they could not be read) and why not."""
    rows, problem = read_prediction_rows(job_dir, n_stages)
    return item_frame([(job_id, rows)]), problem


def retrieval_units(items: pl.DataFrame) -> pl.DataFrame:
    """Per job: ``exact_retrieval`` as ``exact`` is, the mean over blocks of each block's mean
    (null for a job whose rows could not be scored)."""
    per_block = items.group_by("job_id", "block").agg(pl.col("exact_retrieval").mean())
    return per_block.group_by("job_id").agg(pl.col("exact_retrieval").mean())


def pooled_units(long: pl.DataFrame) -> pl.DataFrame:
    """Per job at its final stage: ``exact``/``name`` pooled over examples and as the mean over blocks."""
    final = long.filter(pl.col("stage") == pl.col("n_stages"))
    return final.group_by("job_id").agg(
        *((pl.col(m) * pl.col("n")).sum().truediv(pl.col("n").sum()).alias(f"{m}_pooled") for m in ITEM_METRICS),
        *(pl.col(m).mean().alias(f"{m}_macro") for m in ITEM_METRICS),
    )


def strata_frame(items: pl.DataFrame) -> pl.DataFrame:
    """``arm, stratum, metric, value, n``: accuracy within each stratum, items pooled over the arm's units."""
    parts = []
    for stratum in STRATA:
        # Grouped by the stratum's own values, labelled after: a label per row costs a study of
        # two million rows a string each.
        grouped = items.filter(pl.col(stratum).is_not_null()).group_by("arm", stratum).agg(
            *(pl.col(m).mean() for m in ITEM_METRICS), pl.len().cast(pl.Int64).alias("n"))
        label = (pl.lit(f"{stratum}=") + pl.col(stratum).cast(pl.String).str.to_lowercase()).alias("stratum")
        for metric in ITEM_METRICS:
            parts.append(grouped.select("arm", label, pl.lit(metric).alias("metric"), pl.col(metric).alias("value"),
                                        "n"))
    schema = {"arm": pl.String, "stratum": pl.String, "metric": pl.String, "value": pl.Float64, "n": pl.Int64}
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(parts).select(*schema).cast(schema).sort("arm", "stratum", "metric")


ITEM_TEST = "item-sign-flip-by-dialogue"
MCNEMAR_TEST = "mcnemar-conditional-on-units"
_PAIRED_ITEM_SCHEMA = {
    "arm": pl.String, "baseline": pl.String, "metric": pl.String, "test": pl.String, "pairs": pl.Int64,
    "items": pl.Int64, "mean_diff": pl.Float64, "ci_lo": pl.Float64, "ci_hi": pl.Float64, "p_value": pl.Float64,
    "p_kind": pl.String, "draws": pl.Int64, "dialogues": pl.Int64,
}


def items_with_ids(items: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The prediction rows the item-level tests can pair by ``item``, and a note per kind of job left out.

    A job whose rows lack ``item`` (files from before rows had one) or repeat one is left out
    whole: pairing it on block|dialogue_key|step would join different records."""
    per_job = items.group_by("job_id").agg(
        (pl.col("item").null_count() > 0).alias("missing"), (pl.col("item").n_unique() < pl.len()).alias("repeated"),
    )
    missing = per_job.filter(pl.col("missing"))["job_id"]
    repeated = per_job.filter(~pl.col("missing") & pl.col("repeated"))["job_id"]
    notes = []
    if missing.len():
        notes.append(
            f"item-level tests leave out {missing.len()} job(s) whose final predictions have no `item` ids "
            "(written before prediction rows named their record): block|dialogue_key|step repeats across "
            "records, so their items cannot be paired; their units still count in the unit-level tests"
        )
    if repeated.len():
        notes.append(f"item-level tests leave out {repeated.len()} job(s) whose final predictions repeat an `item` id")
    return items.filter(~pl.col("job_id").is_in([*missing, *repeated])), notes


def item_paired_frame(units: pl.DataFrame, items: pl.DataFrame, arms: Sequence[str], *,
                      resamples: int = itemstats.RESAMPLES, seed: int = itemstats.SEED,
                      draws: int = itemstats.DRAWS, pairs: Sequence[tuple[str, str]] | None = None) -> pl.DataFrame:
    """Per pair of arms and metric, over the units both share: the item test (all its rows first),
    then the stratified McNemar test, conditional on the units, with a two-level bootstrap CI.

    ``items`` are rows with unique ``item`` ids per job (:func:`items_with_ids`); ``pairs``
    are the (arm, baseline) comparisons (default: every pair of ``arms``, first minus later)."""
    rows: dict[str, list[tuple[Any, ...]]] = {ITEM_TEST: [], MCNEMAR_TEST: []}
    # Only the columns the tests read travel through the joins (the texts would be copied per pair).
    keyed = items.filter(pl.col("item").is_not_null()).select("job_id", "arm", "item", "dialogue", *ITEM_METRICS).join(
        units.select("job_id", "seed", "order"), on="job_id", how="inner")
    for arm, baseline in pairs if pairs is not None else itertools.combinations(arms, 2):
        x = keyed.filter(pl.col("arm") == arm)
        y = keyed.filter(pl.col("arm") == baseline)
        joined = x.join(y, on=["seed", "order", "item"], how="inner", suffix="_base")
        if joined.height == 0:
            continue
        unit_keys = joined.select("seed", "order").unique().sort("seed", "order")
        # The item test and the bootstrap need one item set for all units: the items every shared unit has.
        common = joined.group_by("item").agg(pl.len().alias("k")).filter(pl.col("k") == unit_keys.height)
        matrix_rows = joined.join(common.select("item"), on="item").sort("seed", "order", "item")
        n_units, n_items = unit_keys.height, common.height
        dialogues = matrix_rows["dialogue"][:n_items].to_list()
        for metric in ITEM_METRICS:
            diff = (matrix_rows[metric].cast(pl.Float64) - matrix_rows[f"{metric}_base"].cast(pl.Float64)).to_numpy()
            lo = hi = None
            if n_items:
                diff = diff.reshape(n_units, n_items)
                t = itemstats.item_test(diff, dialogues, draws=draws, resamples=resamples, seed=seed)
                rows[ITEM_TEST].append((arm, baseline, metric, ITEM_TEST, n_units, n_items, t.mean, t.low, t.high,
                                        t.p, "exact" if t.exact else "monte-carlo", t.draws, t.clusters))
                ci = itemstats.two_level_bootstrap(diff, dialogues, resamples=resamples, seed=seed)
                lo, hi = ci.low, ci.high
            # Each unit's discordant counts (itemstats.discordant's b and c), in one pass over every unit.
            x_only, y_only = pl.col(metric) & ~pl.col(f"{metric}_base"), ~pl.col(metric) & pl.col(f"{metric}_base")
            counts = joined.group_by("seed", "order").agg(x_only.sum().alias("b"), y_only.sum().alias("c"))
            per_unit = list(zip(counts["b"].to_list(), counts["c"].to_list()))
            mean = (joined[metric].cast(pl.Float64) - joined[f"{metric}_base"].cast(pl.Float64)).mean()
            rows[MCNEMAR_TEST].append((arm, baseline, metric, MCNEMAR_TEST, n_units, n_items, mean, lo, hi,
                                       itemstats.stratified_mcnemar(per_unit), "exact", None, None))
    table = rows[ITEM_TEST] + rows[MCNEMAR_TEST]
    return pl.DataFrame(table, schema=_PAIRED_ITEM_SCHEMA, orient="row")


def study_baselines(specs: Sequence[Any]) -> tuple[pl.DataFrame, str | None]:
    """``baseline, block, metric, value, n`` on the held-out sets of the study's data (its first job's),
    and a note when they cannot be computed here (e.g. the data root is elsewhere)."""
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.baselines import baseline_rows

    schema = {"baseline": pl.String, "block": pl.String, "metric": pl.String, "value": pl.Float64, "n": pl.Int64}
    if not specs:
        return pl.DataFrame(schema=schema), None
    datas: list[Any] = []  # the distinct data settings (a list: a settings object need not hash)
    for spec in specs:
        if spec.data not in datas:
            datas.append(spec.data)
    try:
        data = load_study_data(specs[0].data)
    except TrajhpcError as err:
        return pl.DataFrame(schema=schema), f"baselines not computed: {err}"
    note = f"baselines use the first job's data settings ({len(datas)} differ)" if len(datas) > 1 else None
    rows = baseline_rows(data.train, data.heldout)
    return pl.DataFrame(rows, schema=schema).select(*schema), note


def factorial_frame(units: pl.DataFrame) -> pl.DataFrame:
    """``family, effect, metric, estimate, ci_low, ci_high, p_value, p_kind, n`` from the units' final accuracies.

    One family per arm suffix: the plain arms (``A``, ``calls-only``, ``responses-only``,
    ``B``; family ``plain``) and each tool-documentation set (``A+docs-dialogue``, …;
    family ``docs-dialogue``).
    """
    rows = []
    families: dict[str, dict[str, dict[str, dict[Any, float]]]] = {}
    for arm, seed, order, *values in units.select("arm", "seed", "order", *ITEM_METRICS).iter_rows():
        base, _, suffix = arm.partition("+")
        for metric, value in zip(ITEM_METRICS, values):
            if value is not None:
                families.setdefault(suffix or "plain", {}).setdefault(metric, {}).setdefault(base, {})[(seed, order)] = value
    for family, by_metric in sorted(families.items()):
        for metric in ITEM_METRICS:
            rows += [{"family": family, **r} for r in factorial_rows(by_metric.get(metric, {}), metric)]
    schema = {"family": pl.String, "effect": pl.String, "metric": pl.String, "estimate": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "p_value": pl.Float64, "p_kind": pl.String, "n": pl.Int64}
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
