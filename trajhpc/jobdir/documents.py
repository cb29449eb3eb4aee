"""The validated documents of a job directory (``trajhpc aggregate``'s reading of docs/CONTRACTS.md).

:func:`read_job_docs` returns a job's spec, metrics and tokens, or raises
:class:`JobProblem` with the job's status (incomplete, corrupt, unreadable, foreign,
mismatch), the file concerned and what is wrong. Files are read with
:mod:`trajhpc.jobdir.paths`'s safe reader, so a FIFO, a huge or deeply nested file is a
reason, never a hang or a traceback. Documents are validated strictly (a bool is a
JSON ``true``/``false``, not ``"yes"``); unknown keys are ignored.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from pydantic.dataclasses import dataclass
from typing_extensions import NotRequired, TypedDict

from trajhpc.core.errors import InputError
from trajhpc.jobdir.paths import (
    JOB_FILES,
    MAX_DEPTH,
    METRICS,
    SPEC,
    TOKENS,
    FileProblem,
    JobDir,
    dir_problem,
    nested_deeper_than,
    parse_json,
    read_bytes,
    read_json_object,
)
from trajhpc.spec import SPEC_SCHEMA, ConditionName, JobSpec, as_written, job_id_of, spec_from_dict, template_key

METRICS_SCHEMA = "trajhpc.metrics/1"
TOKENS_SCHEMA = "trajhpc.tokens/1"

OK, INCOMPLETE, CORRUPT, UNREADABLE, FOREIGN, MISMATCH = "ok", "incomplete", "corrupt", "unreadable", "foreign", "mismatch"


# The documents are pydantic dataclasses with slots, not models: the aggregate validates three
# per job, 30,000 for a 10,000-job study, and building model instances cost it twice the time.
# Unknown keys are ignored: a newer writer may add fields within the same schema.
# Strict: "yes" is not a bool nor "3" an int (an integer still counts as a float).
_DOC = ConfigDict(extra="ignore", populate_by_name=True, strict=True)
_doc = dataclass(config=_DOC, slots=True, kw_only=True)

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]


@_doc
class BlockScores:
    n: Count
    exact: Fraction | None
    name: Fraction | None
    name_excl_toolsearcher: Fraction | None = None
    parse_fail: Fraction | None = None
    arg_f1: Fraction | None = None
    errors: dict[str, int] = field(default_factory=dict)
    # eval.gold_likelihood: teacher-forced means over the block's items (absent when not scored).
    gold_token_acc: Fraction | None = None
    gold_nll: Annotated[float, Field(ge=0.0)] | None = None


@with_config(_DOC)
class PredictionRow(TypedDict):
    """One row of ``predictions/stage-K.jsonl`` as the aggregate reads it (strict: ``"false"`` is no bool).
    ``item`` is null in files written before rows named their record; the text fields are optional.

    A TypedDict, not a dataclass like the other documents: a study holds a row per job and item (two
    million for 10,000 jobs) and pydantic builds a dict in half the time. An optional field may be
    absent: read it with ``.get``."""

    item: NotRequired[str | None]
    block: str
    dialogue_key: str
    step: Count
    exact: bool
    name: bool
    target_kind: NotRequired[str | None]
    gold_name_in_prompt: NotRequired[bool | None]
    gold_values_in_prompt: NotRequired[bool | None]
    prediction: NotRequired[str | None]
    gold: NotRequired[str | None]
    # The condition the prompt was rendered under when it is not the job's own (eval.also_under);
    # absent (None) for the job's own condition, as in every file written before the option.
    eval_condition: NotRequired[ConditionName | None]
    # eval.gold_likelihood: the gold call's teacher-forced token accuracy and mean NLL (absent when not scored).
    gold_token_acc: NotRequired[Fraction | None]
    gold_nll: NotRequired[Annotated[float, Field(ge=0.0)] | None]


@_doc
class EvalUnder:
    eval_seconds: float | None = None
    per_block: dict[str, BlockScores]


@_doc
class MetricsStage:
    stage: Count
    trained_block: str | None
    train_loss: float | None = None
    train_seconds: float | None = None
    per_block: dict[str, BlockScores]
    # eval.also_under: condition -> the same items scored with prompts rendered under it.
    also_under: dict[str, EvalUnder] = field(default_factory=dict)


@_doc
class MeasuredResources:
    params_base: int | None = None
    params_trainable: int | None = None


@_doc
class MetricsDoc:
    schema_: str = Field(alias="schema")
    job_id: str
    study: str | None = None
    condition: str
    arm: str
    seed: int
    order: list[str]
    complete: bool
    stages: list[MetricsStage]
    resources: MeasuredResources | None = None


@_doc
class TokenStage:
    stage: Count
    block: str | None = None
    # Optimizer steps of the stage; None in files written before jobs recorded them (not 0: unknown).
    steps: Count | None = None
    examples: Count | None = None
    supervised_tokens: Count
    total_tokens: Count
    padded_tokens: Count | None = None
    # Training examples shortened to fit train.max_seq_len (cut: the system message lost its start too);
    # absent in files written before they were counted.
    truncated_examples: Count | None = None
    cut_examples: Count | None = None


@_doc
class EvalTruncation:
    """Held-out prompts shortened to fit ``train.max_seq_len - eval.max_new_tokens`` (``prompt_room``)."""

    examples: Count
    truncated_examples: Count
    cut_examples: Count
    prompt_room: int


@_doc
class TokensDoc:
    schema_: str = Field(alias="schema")
    job_id: str
    stages: list[TokenStage]
    evaluation: EvalTruncation | None = None


@functools.cache
def adapter(doc: type) -> TypeAdapter[Any]:
    """The (compiled once) validator of a document class."""
    return TypeAdapter(doc)


def identity(spec: JobSpec) -> dict[str, Any]:
    """The fields that tie a metrics document to its spec (the aggregate checks them against spec.json)."""
    return {
        "job_id": spec.job_id, "condition": spec.condition, "arm": spec.arm, "seed": spec.seed,
        "order": list(spec.order), "model": spec.model, "quantization": spec.quantization,
    }


def checked(model: type, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` once it validates as ``model``: writers (the job, the test fixtures) check what they write
    against the documents the aggregate reads with, so a renamed field fails where it is written."""
    adapter(model).validate_json(json.dumps(doc))  # as the aggregate reads it: from JSON text
    return doc


class JobProblem(Exception):
    """Why a job is excluded: its status, the file's name ("" for the folder itself) and what is wrong."""

    def __init__(self, status: str, file: str, detail: str):
        super().__init__(f"{file}: {detail}" if file else detail)
        self.status, self.file, self.detail = status, file, detail

    @property
    def reason(self) -> str:
        return str(self)



def _from_file_problem(name: str, problem: FileProblem) -> JobProblem:
    return JobProblem(UNREADABLE if problem.kind == "unreadable" else CORRUPT, name, problem.reason)


def _load(job_dir: Path, name: str, model: type, schema: str) -> Any:
    """Parse and validate one JSON document; None when missing; JobProblem when bad.

    The fast path validates the raw bytes in one go (pydantic's own JSON parser);
    only a failing document is parsed again to say whether it is damaged JSON, a
    foreign schema or a bad field.
    """
    path = os.path.join(job_dir, name)  # a str: a Path per file is a measurable share of 30,000 reads
    try:
        raw = read_bytes(path)
    except FileProblem as problem:
        if problem.kind == "missing":
            return None
        raise _from_file_problem(name, problem) from None
    try:
        doc = adapter(model).validate_json(raw)
    except ValidationError as err:
        _classify(raw, Path(path), schema, err)
    if nested_deeper_than(raw, MAX_DEPTH):  # as every reader of the job directory says
        raise JobProblem(CORRUPT, name, f"nested deeper than {MAX_DEPTH} levels")
    if doc.schema_ != schema:
        raise JobProblem(FOREIGN, name, f"schema {doc.schema_!r} is not {schema!r}")
    return doc


def _classify(raw: bytes, path: Path, schema: str, err: ValidationError) -> NoReturn:
    """Turn a failed validation into the most useful JobProblem."""
    name = path.name
    try:
        obj = parse_json(raw, path)
    except FileProblem as problem:
        raise _from_file_problem(name, problem) from None
    if not isinstance(obj, dict):
        raise JobProblem(CORRUPT, name, "expected a JSON object")
    if obj.get("schema") != schema:
        raise JobProblem(FOREIGN, name, f"schema {obj.get('schema')!r} is not {schema!r}")
    if name == SPEC:  # the spec module words its own errors
        try:
            spec_from_dict(obj, name)
        except InputError as spec_err:
            raise JobProblem(CORRUPT, name, f"{spec_err.field}: {spec_err.message}") from None
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    raise JobProblem(CORRUPT, name, f"{loc}: {first['msg']}")


def _state_note(job_dir: Path) -> str:
    """' (state.json: failed: ...)' when the job says it failed; best effort, never raises."""
    try:
        state = read_json_object(JobDir(job_dir).state)
    except FileProblem:
        return ""
    if state is not None and state.get("state") == "failed":
        lines = str(state.get("error")).strip().splitlines() or ["no error recorded"]
        return f" (state.json: failed: {lines[-1][:200]})"  # a traceback's last line names the error
    return ""


def read_job_docs(job_dir: Path) -> tuple[JobSpec, MetricsDoc, TokensDoc]:
    """A complete job's validated spec, metrics and tokens; JobProblem says why a job is not one."""
    spec, metrics, tokens, _ = read_job_docs_and_template(job_dir)
    return spec, metrics, tokens


def read_job_docs_and_template(job_dir: Path) -> tuple[JobSpec, MetricsDoc, TokensDoc, str]:
    """:func:`read_job_docs` and the spec's :func:`trajhpc.spec.template_key` (its JSON form without seed
    and order), for a reader that keeps results per template (the aggregate's variants)."""
    problem = dir_problem(job_dir)
    if problem is not None:
        raise _from_file_problem("", problem)
    return _read_job(job_dir)


def _read_job(job_dir: Path) -> tuple[JobSpec, MetricsDoc, TokensDoc, str]:
    spec: JobSpec | None = _load(job_dir, SPEC, JobSpec, SPEC_SCHEMA)
    if spec is not None:
        spec = as_written(spec)
    if spec is None:  # the folder has results but no spec: nothing says what they are
        present = [name for name in JOB_FILES[1:] if (job_dir / name).exists()]
        raise JobProblem(CORRUPT, SPEC, f"missing (the folder has {' and '.join(present) or 'no job files'})")
    template = template_key(spec)
    job_id = job_id_of(spec, template)
    if job_dir.name != job_id:
        raise JobProblem(MISMATCH, SPEC, f"hashes to {job_id} but the folder is named {job_dir.name}")
    order = list(spec.order)
    trained = list(spec.stage_blocks)  # what each stage trains: the order's blocks, or one joint stage
    n_stages = len(trained)

    metrics: MetricsDoc | None = _load(job_dir, METRICS, MetricsDoc, METRICS_SCHEMA)
    if metrics is None:
        raise JobProblem(INCOMPLETE, METRICS, f"missing, no stage evaluated yet{_state_note(job_dir)}")
    expected = {"job_id": job_id, "condition": spec.condition, "arm": spec.arm, "seed": spec.seed, "order": order}
    for key, value in expected.items():
        if (got := getattr(metrics, key)) != value:
            raise JobProblem(MISMATCH, METRICS, f"{key} {got!r} does not match spec.json ({value!r})")
    if metrics.study is not None and metrics.study != job_dir.parent.name:
        folder = job_dir.parent.name
        raise JobProblem(MISMATCH, METRICS, f"study {metrics.study!r} does not match its folder {folder!r}")
    _check_stages(metrics.stages, order, trained, spec.eval.also_under)
    if not metrics.complete or len(metrics.stages) < n_stages + 1:
        done = f"stage {len(metrics.stages) - 1} of {n_stages}" if metrics.stages else "no stage evaluated yet"
        complete = str(metrics.complete).lower()
        raise JobProblem(INCOMPLETE, METRICS, f"{done} (complete: {complete}){_state_note(job_dir)}")

    tokens: TokensDoc | None = _load(job_dir, TOKENS, TokensDoc, TOKENS_SCHEMA)
    if tokens is None:
        raise JobProblem(INCOMPLETE, TOKENS, "missing")
    if tokens.job_id != job_id:
        raise JobProblem(MISMATCH, TOKENS, f"job_id {tokens.job_id!r} does not match spec.json ({job_id!r})")
    for t, stage in enumerate(tokens.stages):
        block = trained[t - 1] if 0 < t <= n_stages else None
        if stage.stage != t or stage.block != block:
            got = f"stage {stage.stage} on {stage.block!r}"
            raise JobProblem(CORRUPT, TOKENS, f"stages.{t}: expected stage {t} on block {block!r}, got {got}")
    if len(tokens.stages) != n_stages + 1:
        raise JobProblem(INCOMPLETE, TOKENS, f"{len(tokens.stages)} stages, expected {n_stages + 1}")
    return spec, metrics, tokens, template


def _check_stages(
    stages: list[MetricsStage], order: list[str], stage_blocks: list[str], also_under: tuple[str, ...] = ()
) -> None:
    """Stage t must follow training stage_blocks[t-1] (order[t-1] unless the curriculum is joint) and
    evaluate the same blocks as stage 0, under its own condition and under each of the spec's
    ``eval.also_under`` (no more, no fewer)."""
    if len(stages) > len(stage_blocks) + 1:
        raise JobProblem(CORRUPT, METRICS, f"stages: {len(stages)} stages for {len(stage_blocks)} training stages")
    blocks = set(stages[0].per_block) if stages else set()
    for t, stage in enumerate(stages):
        trained = stage_blocks[t - 1] if t else None
        if stage.stage != t or stage.trained_block != trained:
            got = f"stage {stage.stage} after {stage.trained_block!r}"
            expected = f"expected stage {t} after training {trained!r}"
            raise JobProblem(CORRUPT, METRICS, f"stages.{t}: {expected}, got {got}")
        if set(stage.per_block) != blocks:
            evaluated = f"evaluates {sorted(stage.per_block)}, stage 0 evaluates {sorted(blocks)}"
            raise JobProblem(CORRUPT, METRICS, f"stages.{t}.per_block: {evaluated}")
        if set(stage.also_under) != set(also_under):
            got = f"scores under {sorted(stage.also_under)}, spec.json's eval.also_under is {list(also_under)}"
            raise JobProblem(CORRUPT, METRICS, f"stages.{t}.also_under: {got}")
        for condition, under in stage.also_under.items():
            if set(under.per_block) != blocks:
                evaluated = f"evaluates {sorted(under.per_block)}, stage 0 evaluates {sorted(blocks)}"
                raise JobProblem(CORRUPT, METRICS, f"stages.{t}.also_under.{condition}.per_block: {evaluated}")
    missing = [b for b in order if stages and b not in blocks]
    if missing:
        raise JobProblem(CORRUPT, METRICS, f"stages.0.per_block: trained blocks {missing} are never evaluated")


