"""The job spec: the one plain, JSON-able object shared by the launcher and the job.

Its canonical JSON (sorted keys, no whitespace) is hashed into the job id, so two
specs that train the same thing get the same id and the same run directory.
Fields that do not change what is computed (study name, container, resources)
are kept out of the spec; they live in the manifest and the provenance.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trajhpc.core.errors import InputError, TrajhpcError, read_json_input

SPEC_SCHEMA = "trajhpc.spec/1"
# What the prompt keeps of the earlier API turns (trajhpc.data.conditions renders each).
ConditionName = Literal["A", "A-slots", "B", "calls-only", "responses-only", "last-k"]
CONDITIONS: tuple[str, ...] = get_args(ConditionName)
# How a job trains the blocks (trajhpc.job.curriculum): sequential = one stage per block of the
# order (the study); joint = one stage on every block's examples together (the retention upper
# bound); replay = stage k adds a seeded draw of earlier blocks' examples to block k's.
CurriculumName = Literal["sequential", "joint", "replay"]
# replay's default share of a stage's examples drawn from earlier blocks (the arm name omits it).
DEFAULT_REPLAY = 0.25
# What numpy, torch and random all accept as a seed.
SEED_MAX = 2**32 - 1


# The tiny model's recipe version (trajhpc.job.models builds it). Specs record
# ``tiny-v<TINY_VERSION>``, so a new recipe gives new job ids. v1: random init.
# v2: pre-trained on the lv3 training dialogues (tiny_corpus), tokenizer trained on them too.
# v3: copy drills and renamed tools first (trajhpc.job.tinycorpus): it copies unseen tool names.
# v4: pre-trained on the level-1/2 files only (no lv3 record), every condition in equal shares;
# seed 0 ships built in the package (trajhpc/resources/tiny-v4).
TINY_VERSION = 4

# What a job computes from an unchanged spec (batching, schedule, scoring inside the job).
# Specs record it, so old and new results never share a job id; a spec.json without the
# field was written before it existed (recipe 1) and keeps its id. The job runs only the
# current recipe; results of an older one stay readable.
# v1: batches grouped by each arm's own token lengths, warm-up from learning rate 0.
# v2: the same examples in every optimizer step of every arm of a unit (the controlled comparison).
RECIPE_VERSION = 2
_TINY = re.compile(r"tiny(?:-v(\d+))?(?:-seed(\d+))?")


def tiny_seed(spec: str) -> int | None:
    """The seed of a tiny spec (``tiny``, ``tiny-seed3``, ``tiny-v3-seed3``), None for other models.

    A version other than the current recipe's is an error: that model is no longer built.
    """
    match = _TINY.fullmatch(spec)
    if match is None:
        return None
    version, seed = match.groups()
    if version is not None and int(version) != TINY_VERSION:
        raise TrajhpcError(
            f"model {spec!r}: this trajhpc builds the tiny recipe v{TINY_VERSION} only "
            f"(v{int(version)} came from another trajhpc version); use 'tiny' or 'tiny-v{TINY_VERSION}'"
        )
    return int(seed or 0)


def versioned_model(spec: str) -> str:
    """The model as job specs record it: ``tiny``/``tiny-seed<N>`` with the recipe version
    (``tiny-v3``, ``tiny-v3-seed<N>``), so jobs of a rebuilt tiny model get new ids; any
    other model (hub id, folder, ``smollm2-135m-instruct``) unchanged."""
    seed = tiny_seed(spec)
    if seed is None:
        return spec
    return f"tiny-v{TINY_VERSION}" + (f"-seed{seed}" if "-seed" in spec else "")


def _not_bool(value: Any) -> Any:
    # pydantic reads true/false as 1/0 in a number field; YAML makes that typo easy.
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# Numbers that refuse true/false (models below also refuse inf and nan).
Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Seed = Annotated[Int, Field(ge=0, le=SEED_MAX)]


class StrictModel(BaseModel):
    """The base of every model of a spec or a manifest: unknown keys, inf and nan refused; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_DEFAULT: Any = object()


def omitted_when(default: Any, omit: Any = _DEFAULT, **constraints: Any) -> Any:
    """A field added after a spec schema was in use: left out of the JSON (and so of the job id)
    while it holds ``omit`` (its default unless given), which reproduces the earlier behaviour.
    Existing job directories keep their ids; any other value makes a new job. Pydantic drops it
    in its own serializer (``exclude_if``), so the job id costs no Python call per model."""
    omit = default if omit is _DEFAULT else omit
    return Field(default, exclude_if=lambda value: value == omit, **constraints)


class BlockRule(StrictModel):
    """One rule of a rule-based partition: the first rule whose regex matches wins."""

    block: str
    regex: str


class BlocksSpec(StrictModel):
    """How dialogues are split into named domain blocks.

    ``kind="lv3-rules"``: ordered regexes over the lower-cased first user utterance
    (``rules`` overrides the built-in ones; ``default`` catches the rest).
    ``kind="scenario"``: scenario of the dialogue's lead API from all_apis.csv
    (``scenarios`` maps block name -> list of scenario names, overriding the built-in map);
    records without a lead API (lv3, the lv1/lv2 training sets) go by ``rules`` when given
    (unmatched: ``default``), so one partition can hold a mix of levels.
    """

    kind: Literal["lv3-rules", "scenario"] = "lv3-rules"
    rules: tuple[BlockRule, ...] | None = None
    default: str | None = None
    scenarios: dict[str, tuple[str, ...]] | None = None


def _hub_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value):
        raise ValueError(f"expected a Hugging Face dataset id like liminghao1630/API-Bank, got {value!r}")
    return value


def _revision(value: str | None) -> str | None:
    if value is not None and (
        not re.fullmatch(r"[\w.-]+(/[\w.-]+)*", value) or any(set(part) == {"."} for part in value.split("/"))
    ):
        raise ValueError(f"expected a branch, tag or commit hash, got {value!r}")
    return value


def _fingerprint(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise ValueError("expected 'sha256:' and 64 lower-case hex digits (as `trajhpc data inspect` prints it)")
    return value


class HubSource(StrictModel):
    """A Hugging Face dataset repository, read from the local cache only (trajhpc.data.source)."""

    hf: Annotated[str, AfterValidator(_hub_id)]  # e.g. liminghao1630/API-Bank
    # A branch, tag or full commit hash of the cached snapshot; None = main.
    revision: Annotated[str | None, AfterValidator(_revision)] = None


class DataSpec(StrictModel):
    """Where the records come from and how they are blocked and split."""

    root: str | None = None  # None = the copy bundled in the package (or ``source``)
    files: tuple[str, ...] = ("training-data/lv3-api-train.json",)
    blocks: BlocksSpec = BlocksSpec()
    heldout_fraction: Float = Field(0.2, gt=0.0, lt=1.0)
    # Caps keep CPU smoke runs short; None = use everything.
    max_train_per_block: Int | None = Field(None, ge=1)
    max_heldout_per_block: Int | None = Field(None, ge=1)
    # Tool documentation added to the system message (trajhpc.data.tooldocs): "dialogue" =
    # every API the dialogue calls, "block" = every API called in the dialogue's block.
    tool_docs: Literal["none", "dialogue", "block"] = omitted_when("none")
    # The full API-Bank from the local Hugging Face cache instead of a folder (``root``).
    source: HubSource | None = omitted_when(None)
    # sha256 of the data files' contents (trajhpc.data.source.fingerprint): set by the grid
    # for a ``source`` (so two different caches never share a job id) and checked by the
    # job; a manifest may pin it. None for the bundled copy and ``root``, as before.
    fingerprint: Annotated[str | None, AfterValidator(_fingerprint)] = omitted_when(None)

    @model_validator(mode="after")
    def _check_source(self) -> "DataSpec":
        if self.source is not None and self.root is not None:
            raise ValueError("set either root (a folder) or source (a Hugging Face dataset), not both")
        return self


class LoraSpec(StrictModel):
    r: Int = Field(16, ge=1)
    alpha: Int = Field(32, ge=1)
    dropout: Float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | tuple[str, ...] = "all-linear"


class TrainSpec(StrictModel):
    epochs: Float = Field(1.0, gt=0)
    max_steps: Int | None = Field(None, ge=1)  # per block; overrides epochs when set
    lr: Float = Field(2e-4, gt=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: Float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: Float = Field(0.0, ge=0.0)
    batch_size: Int = Field(8, ge=1)  # rows per micro-batch (without tokens_per_batch)
    grad_accum: Int = Field(1, ge=1)
    # Examples per optimizer step (None: batch_size x grad_accum). Which examples form a step
    # depends on their ids, the seed, the stage and the pass only: every arm of a unit takes
    # the same steps (trajhpc.job.batching); micro-batches split a step, never merge two.
    examples_per_step: Int | None = omitted_when(None, ge=1)
    max_seq_len: Int = Field(1024, ge=16)
    # "auto": off when the largest planned batch fits in the device's memory, on otherwise
    # (the choice is recorded in metrics.json, resources.gradient_checkpointing).
    gradient_checkpointing: bool | Literal["auto"] = False
    max_grad_norm: Float = Field(1.0, gt=0)
    # The padded-token cap of one micro-batch: a step's examples, grouped by length, as many
    # per micro-batch as fit in this many padded tokens (batch_size is then unused), so
    # short examples form large micro-batches. It never changes which examples form a step.
    tokens_per_batch: Int | None = omitted_when(None, ge=16)


def _eval_conditions(value: tuple[str, ...]) -> tuple[str, ...]:
    if "last-k" in value:
        raise ValueError("'last-k' needs k, which an evaluation condition does not carry; "
                         f"use one of {', '.join(repr(c) for c in CONDITIONS if c != 'last-k')}")
    repeated = sorted({c for c in value if value.count(c) > 1})
    if repeated:
        raise ValueError(f"lists {', '.join(map(repr, repeated))} more than once")
    # One order for one set: the same conditions in another order are the same job.
    return tuple(sorted(value, key=CONDITIONS.index))


class EvalSpec(StrictModel):
    batch_size: Int = Field(16, ge=1)
    # Long enough for the longest gold calls (up to 99 tokens with the tiny tokenizer, v2 and v3);
    # a gold call longer than this can never be generated exactly (the job counts such
    # examples as ``eval_truncated_gold``).
    max_new_tokens: Int = Field(160, ge=1)
    # Rows x (longest prompt + max_new_tokens) per generation batch; batch_size is then unused.
    tokens_per_batch: Int | None = omitted_when(None, ge=16)
    # "peft": generate through the training model (4-bit base + LoRA side matmuls).
    # "merged": through a copy whose weights are the dequantized base plus the merged
    # adapter in the compute dtype: the same function up to rounding, much faster.
    backend: Literal["peft", "merged"] = omitted_when("peft")
    # Conditions the held-out items are scored under again after every stage (same items,
    # order and generation settings, prompts rendered under each), so the condition an arm
    # trains under and the one it is evaluated under come apart (issue 20 item 2).
    also_under: Annotated[tuple[ConditionName, ...], AfterValidator(_eval_conditions)] = omitted_when(())
    # Also score every held-out item by teacher forcing: the gold call's token accuracy and mean
    # negative log-likelihood given the prompt (evaluate.teacher_forced). A continuous score that
    # moves with what a block teaches even where a small model generates no call right.
    gold_likelihood: StrictBool = omitted_when(False)


class TokenBudget(StrictModel):
    """Train until the cumulative token count equals what condition ``match`` consumes.

    ``count="total"`` (default) matches prompt + target tokens: the compute axis on
    which the conditions differ (B's prompts carry the earlier calls). ``"supervised"``
    matches target tokens only; across A, B, calls-only and last-k the supervised
    tokens are the gold call, equal under every condition, so a supervised-matched arm
    consumes exactly what its own condition does and trains identically to it (the
    job logs a warning when that happens). It only differs where e.g. ``max_seq_len``
    truncation treats the conditions differently.
    """

    match: ConditionName
    count: Literal["supervised", "total"] = "total"


def default_replay(replay: float | None, info: ValidationInfo) -> float | None:
    """A replay curriculum's share written out (``DEFAULT_REPLAY`` when not given), so a replay arm
    with the default share has one id (and one arm) whether or not the share was given: the
    ``replay`` field validator of the spec and of a manifest's condition entry (``curriculum`` is
    validated first)."""
    return DEFAULT_REPLAY if replay is None and info.data.get("curriculum") == "replay" else replay


class JobSpec(StrictModel):
    """Everything that determines what one job computes.

    Read spec.json files with :func:`spec_from_dict` (a file without ``recipe`` is recipe 1);
    a JobSpec built in code takes the current recipe.
    """

    schema_: Literal["trajhpc.spec/1"] = Field(SPEC_SCHEMA, alias="schema")
    condition: ConditionName
    condition_k: Int | None = Field(None, ge=1)  # only for last-k
    seed: Seed = 0
    order: tuple[str, ...]
    model: str = "tiny"
    quantization: Literal["nf4", "none"] = "nf4"
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    data: DataSpec = DataSpec()
    lora: LoraSpec = LoraSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    token_budget: TokenBudget | None = None
    # The recipe version (RECIPE_VERSION above); new specs take the current one.
    # Recipe 1 specs were written without the field: their ids stay.
    recipe: Int = omitted_when(RECIPE_VERSION, omit=1, ge=1)
    curriculum: CurriculumName = omitted_when("sequential")
    # replay only: the share of each stage's examples drawn from earlier blocks (DEFAULT_REPLAY when not given).
    replay: Float | None = omitted_when(None, gt=0.0, lt=1.0, validate_default=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    # A field validator, not a model "before" one: that would make pydantic turn every spec.json
    # into Python objects before validating them (a fifth of the aggregate's reading).
    _default_replay = field_validator("replay", mode="after")(default_replay)

    @model_validator(mode="after")
    def _check(self) -> "JobSpec":
        if self.replay is not None and self.curriculum != "replay":
            raise ValueError(
                f"replay (a share of earlier blocks' examples) needs curriculum 'replay', not {self.curriculum!r}"
            )
        if self.token_budget is not None and self.curriculum != "sequential":
            raise ValueError(f"token_budget works with curriculum 'sequential' only, not {self.curriculum!r}")
        if self.condition == "last-k" and self.condition_k is None:
            raise ValueError("condition 'last-k' needs condition_k")
        if self.condition != "last-k" and self.condition_k is not None:
            raise ValueError("condition_k is only used by condition 'last-k'")
        if len(set(self.order)) != len(self.order) or not self.order:
            raise ValueError(f"order must list distinct blocks, got {list(self.order)}")
        if self.condition in self.eval.also_under:
            raise ValueError(
                f"eval.also_under lists {self.condition!r}, the job's own condition, under which it is evaluated "
                "anyway; leave it out (a manifest's eval.also_under drops each arm's own condition itself)"
            )
        if self.token_budget is not None and self.token_budget.match == "last-k" and self.condition != "last-k":
            raise ValueError(
                "token_budget.match 'last-k' needs k, which only condition 'last-k' sets (condition_k); "
                f"condition {self.condition!r} can match 'A', 'A-slots', 'B', 'calls-only' or 'responses-only'"
            )
        return self

    @property
    def arm(self) -> str:
        """The study arm: the condition, or e.g. ``A@B`` for A matched to B's total tokens
        (``A@B:supervised`` when matched on supervised tokens, so the two never merge);
        ``+docs-dialogue`` / ``+docs-block`` with tool documentation (``data.tool_docs``);
        ``+joint``, ``+replay`` (``+replay0.5`` for a share other than the default) by curriculum."""
        name = self.condition if self.condition != "last-k" else f"last-{self.condition_k}"
        if self.token_budget is not None:
            name += f"@{self.token_budget.match}"
            if self.token_budget.count != TokenBudget.model_fields["count"].default:
                name += f":{self.token_budget.count}"
        if self.data.tool_docs != "none":
            name += f"+docs-{self.data.tool_docs}"
        if self.curriculum == "joint":
            name += "+joint"
        elif self.curriculum == "replay":
            name += "+replay" + ("" if self.replay == DEFAULT_REPLAY else f"{self.replay:g}")
        return name

    @property
    def stage_blocks(self) -> tuple[str, ...]:
        """What each training stage (1..n) trains, as metrics.json and tokens.json name it: the order's
        blocks, or for curriculum joint one stage named by all of them (``a+b+c``)."""
        return ("+".join(self.order),) if self.curriculum == "joint" else self.order

    @property
    def block_stage(self) -> dict[str, int]:
        """Each trained block -> the stage that trains it (under joint, stage 1 for every block)."""
        return {b: 1 if self.curriculum == "joint" else i for i, b in enumerate(self.order, start=1)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the form written to spec.json)."""
        return self.model_dump(mode="json", by_alias=True)

    def canonical_json(self) -> str:
        return canonical_text(self.to_dict())

    @property
    def job_id(self) -> str:
        """Short hash of the canonical spec: equal specs, equal ids."""
        return id_of(self.to_dict())


def canonical_text(doc: dict[str, Any]) -> str:
    """A spec's (or part of one's) JSON form as it is hashed: sorted keys, no whitespace."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def id_of(doc: dict[str, Any]) -> str:
    """The job id of a spec's :meth:`JobSpec.to_dict` form (for a reader that needs the dict anyway)."""
    return hashlib.sha256(canonical_text(doc).encode()).hexdigest()[:12]


# The aggregate hashes thousands of specs that differ only in seed and order (and arm). Keys are
# sorted in the canonical text, so it is fixed text around those two values: that text is built once
# per distinct rest of the spec (its ``template_key``), and an id then costs one small join and a sha256
# instead of a dump of the whole spec (tests/test_spec.py checks it against ``id_of``).
_SLOTS = ("order", "seed")
_EXCLUDE_SLOTS = frozenset(_SLOTS)
_PIECES: dict[str, tuple[str, ...]] = {}


def template_key(spec: JobSpec) -> str:
    """The spec's JSON form without seed and order: specs with equal keys differ in those two only."""
    return spec.model_dump_json(by_alias=True, exclude=_EXCLUDE_SLOTS)


def _pieces(spec: JobSpec, key: str) -> tuple[str, ...]:
    """The canonical text of ``spec``'s form cut before and after each of ``_SLOTS`` (in sorted order)."""
    pieces = _PIECES.get(key)
    if pieces is None:
        form = spec.to_dict()
        cut, text = [], "{"
        for name in sorted(form):  # as json.dumps(sort_keys=True) orders them, at every level
            text += ("," if text != "{" else "") + json.dumps(name) + ":"
            if name in _SLOTS:
                cut.append(text)
                text = ""
            else:
                text += canonical_text(form[name])
        pieces = (*cut, text + "}")
        if len(_PIECES) > 4096:  # a study has a few templates; many distinct ones are not worth keeping
            _PIECES.clear()
        _PIECES[key] = pieces
    return pieces


def job_id_of(spec: JobSpec, key: str | None = None) -> str:
    """``spec.job_id``, from the cached text around its order and seed (``key``: its :func:`template_key`)."""
    before_order, before_seed, after = _pieces(spec, template_key(spec) if key is None else key)
    text = "".join((before_order, canonical_text(list(spec.order)), before_seed, canonical_text(spec.seed), after))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def spec_from_dict(obj: Any, source: str | Path | None = None) -> JobSpec:
    """Validate a plain dict (a spec.json) into a JobSpec; errors name the source file and field.

    A spec without ``recipe`` was written before the field existed: it is recipe 1.
    """
    try:
        return as_written(JobSpec.model_validate(obj))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or None
        raise InputError(source, loc, first["msg"]) from None


def as_written(spec: JobSpec) -> JobSpec:
    """A spec validated from a file: one written without ``recipe`` (before the field existed) is recipe 1."""
    return spec if "recipe" in spec.model_fields_set else spec.model_copy(update={"recipe": 1})


def check_recipe(spec: JobSpec, source: str | Path | None = None) -> None:
    """Refuse to run a spec of another recipe version: this trajhpc computes only its own."""
    if spec.recipe != RECIPE_VERSION:
        raise InputError(
            source, "recipe",
            f"job {spec.job_id} was made for recipe v{spec.recipe}; this trajhpc computes recipe v{RECIPE_VERSION} "
            "only (its results stay readable by aggregate): submit the manifest again for new jobs "
            f"(a spec written by hand takes \"recipe\": {RECIPE_VERSION})",
        )


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a spec JSON file."""
    return spec_from_dict(read_json_input(path, "spec"), Path(path))
