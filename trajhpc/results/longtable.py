"""The long table of a study: one row per job x stage x evaluated block, every score and token count.

Built from the validated job records (:mod:`trajhpc.results.jobrecords`); every other table of
:mod:`trajhpc.results.tables` reads it.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter
from typing import Any, Sequence

import numpy as np
import polars as pl

from trajhpc.job.scoring import GOLD_KEYS, SCORE_KEYS
from trajhpc.jobdir.documents import OK, BlockScores
from trajhpc.results.jobrecords import JobRecord, arm_labels

_JOB_COLUMNS = ("study", "job_id", "variant", "model", "quantization", "condition", "arm", "seed", "order", "n_stages")
_STAGE_COLUMNS = ("eval_condition", "stage", "trained_block", "train_loss")
_TOKEN_COLUMNS = ("steps", "examples", "supervised_tokens", "total_tokens", "padded_tokens")


def build_long_table(records: Sequence[JobRecord]) -> pl.DataFrame:
    """The tidy long table of the ``ok`` jobs: one row per job x stage x evaluated block.

    Columns: study, job_id, variant, model, condition, arm, seed, order ('a>b>c'), n_stages,
    eval_condition (the job's own condition, then one set of rows per ``eval.also_under`` condition;
    other tables read the own rows, :func:`own_rows`), stage, trained_block, block, block_pos (the
    stage that trains the block, 1 for all under curriculum joint; null if never trained), per-stage
    and cumulative examples/supervised/total/padded tokens, train_loss, the scores (n, exact, name,
    name_excl_toolsearcher, parse_fail, arg_f1), one ``errors_<type>`` column per error type, and the
    teacher-forced gold_token_acc and gold_nll (null where the job did not score them: eval.gold_likelihood).
    """
    # Job- and stage-level values go in one row per job and per job x stage (tuples, transposed at the
    # end), and every block row takes its job's and stage's row by index (np.repeat of the row counts,
    # gathered in polars at the end: 200,000 strings from Python lists cost more than the rest);
    # per-block scores are gathered as objects (itemgetter: one C call per stage) and turned into
    # columns at the end, one pass per column.
    job_tuples: list[tuple[Any, ...]] = []
    stage_tuples: list[tuple[Any, ...]] = []
    job_blocks: list[int] = []  # per job: blocks evaluated (rows per stage row)
    job_stage_rows: list[int] = []  # per job: stage rows (stages x conditions)
    block_names: list[str] = []
    block_pos: list[int | None] = []
    scores: list[BlockScores] = []
    tok: list[tuple[Any, ...]] = []
    labels = arm_labels(records)
    for r in records:
        spec, metrics, tokens = r.spec, r.metrics, r.tokens
        if r.status != OK or spec is None or metrics is None or tokens is None:
            continue
        job_id = r.path.name  # == spec.job_id, checked on reading
        blocks = sorted(metrics.stages[0].per_block)
        pick = itemgetter(*blocks) if len(blocks) > 1 else lambda d, b=blocks[0]: (d[b],)
        order_pos = spec.block_stage  # under joint, every block is trained at stage 1
        positions = [order_pos.get(b) for b in blocks]
        under = list(spec.eval.also_under)  # read_job_docs checked every stage scores exactly these
        job_tuples.append((
            r.study, job_id, r.variant, spec.model, spec.quantization, spec.condition, labels[job_id], spec.seed,
            ">".join(spec.order), len(spec.stage_blocks),
        ))
        job_blocks.append(len(blocks))
        job_stage_rows.append(len(metrics.stages) * (1 + len(under)))
        for condition in (spec.condition, *under):
            own = condition == spec.condition
            for stage in metrics.stages:
                per_block = stage.per_block if own else stage.also_under[condition].per_block
                stage_tuples.append((condition, stage.stage, stage.trained_block, stage.train_loss))
                block_names.extend(blocks)
                block_pos.extend(positions)
                scores.extend(pick(per_block))
        tok.extend((job_id, t.stage, t.steps, t.examples, t.supervised_tokens, t.total_tokens, t.padded_tokens)
                   for t in tokens.stages)
    per_job_blocks, per_job_stages = np.asarray(job_blocks, dtype=np.int64), np.asarray(job_stage_rows, dtype=np.int64)
    stage_row = np.repeat(np.arange(len(stage_tuples), dtype=np.int64), np.repeat(per_job_blocks, per_job_stages))
    job_row = np.repeat(np.arange(len(job_tuples), dtype=np.int64), per_job_blocks * per_job_stages)
    fields = ("n", *SCORE_KEYS, *GOLD_KEYS)
    block_cols = {"block": block_names, "block_pos": block_pos, **{k: list(map(attrgetter(k), scores)) for k in fields}}
    errors = list(map(attrgetter("errors"), scores))
    error_cols = {f"errors_{e}": [d.get(e) for d in errors] for e in sorted(set().union(*errors))}
    job_cols = dict(zip(_JOB_COLUMNS, map(list, zip(*job_tuples)))) if job_tuples else dict.fromkeys(_JOB_COLUMNS, [])
    stage_cols = (dict(zip(_STAGE_COLUMNS, map(list, zip(*stage_tuples)))) if stage_tuples
                  else dict.fromkeys(_STAGE_COLUMNS, []))
    front_schema = {
        **dict(zip(_JOB_COLUMNS, (pl.String,) * 7 + (pl.Int64, pl.String, pl.Int64))),
        "eval_condition": pl.String, "stage": pl.Int64, "trained_block": pl.String, "train_loss": pl.Float64,
        "block": pl.String, "block_pos": pl.Int64,
    }
    score_schema = {
        "n": pl.Int64, **dict.fromkeys(SCORE_KEYS, pl.Float64), **dict.fromkeys(error_cols, pl.Int64),
        **dict.fromkeys(GOLD_KEYS, pl.Float64),
    }
    jobs = pl.DataFrame(job_cols, schema={k: front_schema[k] for k in _JOB_COLUMNS})
    stages = pl.DataFrame(stage_cols, schema={k: front_schema[k] for k in _STAGE_COLUMNS})
    blocks_frame = pl.DataFrame({**block_cols, **error_cols}, schema={
        "block": pl.String, "block_pos": pl.Int64, **score_schema,
    })
    long = pl.concat([
        jobs[pl.Series(job_row, dtype=pl.Int64)] if len(job_row) else jobs.clear(),
        stages[pl.Series(stage_row, dtype=pl.Int64)] if len(stage_row) else stages.clear(),
        blocks_frame,
    ], how="horizontal")
    token_schema = {"job_id": pl.String, "stage": pl.Int64, **dict.fromkeys(_TOKEN_COLUMNS, pl.Int64)}
    cumulative = [f"cum_{c}" for c in _TOKEN_COLUMNS]
    # A count some stage did not record (steps before jobs wrote them) leaves the job's cumulative unknown, not short.
    tokens_frame = pl.DataFrame(tok, schema=token_schema, orient="row").with_columns(
        pl.when(pl.col(c).is_null().any().over("job_id")).then(None)
        .otherwise(pl.col(c).cum_sum().over("job_id", order_by="stage")).alias(f"cum_{c}")
        for c in _TOKEN_COLUMNS
    )
    return (
        long.join(tokens_frame, on=["job_id", "stage"], how="left")
        .select(*front_schema, *_TOKEN_COLUMNS, *cumulative, *score_schema)
        .sort("job_id", pl.col("eval_condition") != pl.col("condition"), "eval_condition", "stage", "block")
    )


def own_rows(long: pl.DataFrame) -> pl.DataFrame:
    """The long table's rows scored under each job's own condition: what every table but the
    train x eval one reads, so ``eval.also_under`` changes the meaning of none of them."""
    return long.filter(pl.col("eval_condition") == pl.col("condition"))
