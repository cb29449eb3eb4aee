"""What a grid will cost on a GPU: measured per-token rates times each job's planned work.

A rates file is what ``benchmarks/bench_gpu_qlora.py --job`` writes after timing one
real job on a GPU (train tokens/s, evaluated prompts/s, model set-up seconds).
``trajhpc submit MANIFEST --dry-run --rates FILE`` then plans every job's stages the
way the job will (same data, tokenizer, conditions and stage plans), counts the
tokens each trains on and the prompts each evaluates, and prints the estimated
GPU-hours. Evaluation rates measured on random weights (which never stop early)
are an upper bound on evaluation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trajhpc.core.errors import InputError, read_json_input
from trajhpc.spec import JobSpec

RATES_SCHEMA = "trajhpc.rates/1"


class Rates(BaseModel):
    """Throughput measured on one GPU for one model and one set of settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["trajhpc.rates/1"] = Field(RATES_SCHEMA, alias="schema")
    device: str
    model: str = ""
    train_tokens_per_s: float = Field(gt=0)
    eval_prompts_per_s: float = Field(gt=0)
    setup_s: float = Field(0.0, ge=0)  # per job: imports, data, model load (once per job)
    settings: dict[str, Any] = {}  # what was measured (batching, backends), for the reader


def load_rates(path: str | Path) -> Rates:
    """Read a rates file; errors name the file and the field."""
    path = Path(path)
    obj = read_json_input(path, "rates")
    try:
        return Rates.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        raise InputError(path, ".".join(str(p) for p in first["loc"]) or None, first["msg"]) from None


@dataclass(frozen=True)
class JobWork:
    """What one job computes: tokens trained on (padding excluded) and prompts generated for."""

    train_tokens: int
    eval_prompts: int


def job_seconds(work: JobWork, rates: Rates) -> float:
    """Estimated wall seconds of one job on the measured GPU."""
    return rates.setup_s + work.train_tokens / rates.train_tokens_per_s + work.eval_prompts / rates.eval_prompts_per_s


def format_estimate(works: Sequence[JobWork], rates: Rates, gpus_per_job: int, what: str) -> str:
    """One line: jobs, GPU-hours, and where they go."""
    gpus = max(gpus_per_job, 1)
    train = sum(w.train_tokens for w in works) / rates.train_tokens_per_s
    evals = sum(w.eval_prompts for w in works) / rates.eval_prompts_per_s
    setup = rates.setup_s * len(works)
    hours = (train + evals + setup) * gpus / 3600
    return (
        f"estimated cost of {what} ({len(works)} jobs): {hours:.2f} GPU-hours on {rates.device} "
        f"(train {train * gpus / 3600:.2f} h at {rates.train_tokens_per_s:,.0f} tok/s, "
        f"eval {evals * gpus / 3600:.2f} h at {rates.eval_prompts_per_s:,.1f} prompts/s, "
        f"set-up {setup * gpus / 3600:.2f} h)"
    )


class WorkPlanner:
    """Plans jobs' stages exactly as the job does, sharing tokenized data between jobs."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._tokenizers: dict[str, Any] = {}
        self._examples: dict[tuple, list] = {}

    def work(self, spec: JobSpec) -> JobWork:
        """Tokens this job trains on and prompts it evaluates."""
        data = self._study_data(spec)
        if spec.token_budget is None:
            total = sum(t for t, _ in self._stage_counts(spec, spec.condition, spec.condition_k))
        else:
            # As the job does: each stage stops at the first step whose cumulative budget count
            # reaches what the matched condition consumes through that stage.
            k = spec.condition_k if spec.token_budget.match == "last-k" else None
            key = 1 if spec.token_budget.count == "supervised" else 0
            cumulative, consumed, total = 0, 0, 0
            matched = self._stage_counts(spec, spec.token_budget.match, k)
            for stage, block in enumerate(spec.order, start=1):
                cumulative += matched[stage - 1][key]
                t, s = self._stage_counts_of(spec, block, stage, spec.condition, spec.condition_k,
                                             budget=cumulative - consumed, key=key)
                consumed += (t, s)[key]
                total += t
        heldout = sum(len(data.heldout[b]) for b in data.blocks)
        return JobWork(train_tokens=total, eval_prompts=heldout * (len(spec.order) + 1))

    def _study_data(self, spec: JobSpec):
        from trajhpc.data.splits import load_study_data

        key = spec.data.model_dump_json()
        if key not in self._data:
            self._data[key] = load_study_data(spec.data)
        return self._data[key]

    def _tokenizer(self, model: str):
        if model not in self._tokenizers:
            from transformers import AutoTokenizer

            from trajhpc.job.models import resolve_model

            self._tokenizers[model] = AutoTokenizer.from_pretrained(str(resolve_model(model)))
        return self._tokenizers[model]

    def _block_examples(self, spec: JobSpec, block: str, condition: str, k: int | None) -> list:
        from trajhpc.data.conditions import tokenize_examples

        key = (spec.model, spec.data.model_dump_json(), spec.train.max_seq_len, block, condition, k)
        if key not in self._examples:
            records = self._study_data(spec).train[block]
            self._examples[key] = tokenize_examples(
                self._tokenizer(spec.model), records, condition, k=k, max_seq_len=spec.train.max_seq_len
            )
        return self._examples[key]

    def _stage_counts(self, spec: JobSpec, condition: str, k: int | None) -> list[tuple[int, int]]:
        """(total, supervised) tokens of each stage's unbudgeted plan."""
        return [self._stage_counts_of(spec, block, stage, condition, k) for stage, block in enumerate(spec.order, start=1)]

    def _stage_counts_of(
        self, spec: JobSpec, block: str, stage: int, condition: str, k: int | None,
        budget: int | None = None, key: int = 0,
    ) -> tuple[int, int]:
        """(total, supervised) tokens of one stage's plan (the job's: batching.spec_stage_batches),
        stopped at ``budget`` counted in total (``key`` 0) or supervised (1) tokens when given."""
        from trajhpc.data.tokens import count_tokens
        from trajhpc.job.batching import spec_stage_batches

        examples = self._block_examples(spec, block, condition, k)
        counts = None
        if budget is not None:
            counts = [(c.total_tokens, c.supervised_tokens)[key] for c in (count_tokens([e]) for e in examples)]
        ids = [e.record.uid for e in examples]
        plan = spec_stage_batches(spec.train, ids, [len(e.input_ids) for e in examples], seed=spec.seed, stage=stage,
                                  budget=budget, counts=counts)
        consumed = count_tokens(examples[i] for i in plan.consumed())
        return consumed.total_tokens, consumed.supervised_tokens
