"""The training recipe of one job, in phases: prepare, load the model, evaluate stage k, train stage k.

:func:`prepare` makes every decision an attempt needs before the model exists (data,
tokenizer, examples, held-out items, token budgets, device, precision, checkpointing)
and returns it frozen; the phases after it only read it. The job-directory protocol
(checkpoints, resumption, metrics.json) is :mod:`trajhpc.job.run`'s; this module writes
nothing but the stage's prediction rows it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from rich.console import Console

from trajhpc.job.progress import log
from trajhpc.spec import JobSpec

if TYPE_CHECKING:  # imported where used: trajhpc.job.checkpoint imports torch, which bad input never waits for
    from trajhpc.job.checkpoint import CheckpointState

TOKEN_KEYS = (
    "steps", "examples", "prompt_tokens", "supervised_tokens", "total_tokens", "padded_tokens", "passes",
    "truncated_examples", "cut_examples",
)


@dataclass(frozen=True)
class Prepared:
    """What one attempt decided before loading the model; read-only for every later phase."""

    spec: JobSpec
    model_path: Path
    device: Any  # torch.device
    dtype: Any  # the compute torch.dtype
    autocast: Any  # mixed-precision dtype on CUDA, None on CPU
    tokenizer: Any
    blocks: tuple[str, ...]
    train_examples: Mapping[str, Sequence[Any]]  # block -> tokenized examples of the job's condition
    heldout: Sequence[Any]  # evaluate.HeldOut items of every block
    truncated_gold: Mapping[str, int]
    budgets: Sequence[int] | None  # cumulative token budget through each stage (token_budget arms)
    gradient_checkpointing: bool
    heldout_in_pretraining: int | None = None  # held-out dialogues the model was pre-trained on (tiny only)
    # eval.also_under: condition -> the same held-out items, in the same order, rendered under it.
    heldout_under: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    eval_truncation: Mapping[str, int] | None = None  # tokens.json "evaluation": held-out prompts shortened


# ---------------------------------------------------------------- prepare


def prepare(spec: JobSpec, console: Console) -> Prepared:
    """Data, tokenizer, examples, held-out items, budgets and the device decisions of one attempt."""
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.models import resolve_model

    # Data and model folder first: bad input fails before torch is even imported.
    data = load_study_data(spec.data)
    data.check_order(spec.order)
    model_path = resolve_model(spec.model)
    in_pretraining = _check_pretraining(spec, model_path, data, console)

    import torch
    from transformers import AutoTokenizer

    from trajhpc.job import train

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = train.resolve_compute_dtype(spec.compute_dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_examples = {b: _tokenize(spec, tokenizer, data.train[b], spec.condition, spec.condition_k) for b in spec.order}
    heldout = _heldout(spec, tokenizer, data, spec.condition, spec.condition_k)
    eval_truncation = _warn_truncation(spec, train_examples, heldout, console)
    return Prepared(
        spec=spec,
        model_path=model_path,
        device=device,
        dtype=dtype,
        autocast=train.autocast_dtype_for(device, dtype),
        tokenizer=tokenizer,
        blocks=tuple(data.blocks),
        train_examples=train_examples,
        heldout=heldout,
        truncated_gold=_check_gold_lengths(spec, heldout, data.blocks, console),
        budgets=_budgets(spec, tokenizer, data, train_examples, console) if spec.token_budget else None,
        gradient_checkpointing=_gradient_checkpointing(spec, model_path, train_examples, dtype, device),
        heldout_in_pretraining=in_pretraining,
        heldout_under={c: _heldout(spec, tokenizer, data, c, None) for c in spec.eval.also_under},
        eval_truncation=eval_truncation,
    )


def _check_pretraining(spec: JobSpec, model_path: Path, data, console: Console) -> int | None:
    """How many held-out dialogues were in the model's pre-training text (None: the model does not say),
    with a warning when any were: tiny pre-trains on the level-1/2 files, so a study over them holds
    out some of what it read."""
    from trajhpc.job.models import PRETRAINING_FILE, pretraining_dialogues

    seen = pretraining_dialogues(model_path)
    if not seen:
        return None
    heldout = {r.dialogue_key for records in data.heldout.values() for r in records}
    overlap = len(heldout & seen)
    if overlap:
        log(
            console,
            f"warning: {overlap} of the {len(heldout)} held-out dialogues were in the pre-training text of "
            f"{spec.model} (its {PRETRAINING_FILE} lists them): "
            "their scores do not measure held-out accuracy",
        )
    return overlap


def _tokenize(spec: JobSpec, tokenizer, records, condition: str, k: int | None, reserve: int | None = None):
    from trajhpc.data.conditions import tokenize_examples

    return tokenize_examples(tokenizer, records, condition, k=k, max_seq_len=spec.train.max_seq_len, reserve=reserve)


def _warn_truncation(spec: JobSpec, train_examples, heldout, console: Console) -> dict[str, int]:
    """One job-log warning when any training example or held-out prompt was shortened to fit
    ``train.max_seq_len``; returns the held-out counts (tokens.json ``evaluation``)."""
    train = [e for examples in train_examples.values() for e in examples]
    counts = {
        "examples": len(heldout),
        "truncated_examples": sum(it.truncated > 0 or it.cut_tokens > 0 for it in heldout),
        "cut_examples": sum(it.cut_tokens > 0 for it in heldout),
        "prompt_room": spec.train.max_seq_len - spec.eval.max_new_tokens,
    }
    short_train, cut_train = sum(e.is_truncated for e in train), sum(e.cut_tokens > 0 for e in train)
    if short_train or counts["truncated_examples"]:
        cut = cut_train + counts["cut_examples"]
        log(
            console,
            f"warning: prompts longer than train.max_seq_len={spec.train.max_seq_len} are shortened: "
            f"{short_train} of {len(train)} training examples and {counts['truncated_examples']} of {len(heldout)} "
            f"held-out prompts (which keep {counts['prompt_room']} tokens, eval.max_new_tokens="
            f"{spec.eval.max_new_tokens} being left for the answer) lose their oldest history turns"
            + (f"; {cut} of them lose the start of the system message (instruction and API descriptions) too"
               if cut else "")
            + " (counted in tokens.json; raise train.max_seq_len to keep them whole)",
        )
    return counts


def _heldout(spec: JobSpec, tokenizer, data, condition: str, k: int | None) -> list:
    """Every block's held-out items with prompts rendered under ``condition``, in one order for every condition."""
    from trajhpc.job.baselines import diagnostics
    from trajhpc.job.evaluate import HeldOut, gold_token_count

    special = set(tokenizer.all_special_ids)
    reserve = spec.eval.max_new_tokens  # the prompt leaves room for the answer (conditions.tokenize_example)
    items = []
    for block in data.blocks:
        records = data.heldout[block]
        for r, ex in zip(records, _tokenize(spec, tokenizer, records, condition, k, reserve)):
            gold = gold_token_count(ex.input_ids[len(ex.prompt_ids) :], special)
            seen = diagnostics(r.target, tokenizer.decode(ex.prompt_ids))  # the prompt as the model sees it
            start = len(ex.prompt_ids)
            items.append(HeldOut(r.uid, block, r.dialogue_key, r.step, ex.prompt_ids, r.target, gold, seen,
                                 truncated=ex.truncated, cut_tokens=ex.cut_tokens,
                                 gold_ids=tuple(ex.input_ids[start : start + gold])))
    return items


def _check_gold_lengths(spec: JobSpec, heldout, blocks, console: Console) -> dict[str, int]:
    """Per block, held-out examples whose gold call is longer than eval.max_new_tokens (never exact)."""
    from trajhpc.job.evaluate import truncated_gold

    limit = spec.eval.max_new_tokens
    counts = truncated_gold(heldout, blocks, limit)
    if any(counts.values()):
        longest = max(it.gold_tokens for it in heldout)
        log(
            console,
            f"warning: {sum(counts.values())} of {len(heldout)} held-out gold calls are longer than "
            f"eval.max_new_tokens={limit} tokens (longest {longest}) and can never be generated exactly; "
            "raise eval.max_new_tokens (counted per stage as eval_truncated_gold in metrics.json)",
        )
    return counts


def count(examples) -> dict[str, int]:
    """Token counts of these examples (trajhpc.data.tokens), as a dict."""
    from trajhpc.data.tokens import count_tokens

    return count_tokens(examples).to_dict()


def budget_count(spec: JobSpec, counts: Mapping[str, int]) -> int:
    """The count a token budget is kept in (0 without a budget)."""
    if spec.token_budget is None:
        return 0
    return counts[f"{spec.token_budget.count}_tokens"]


def _gradient_checkpointing(spec: JobSpec, model_path, train_examples, dtype, device) -> bool:
    """The spec's choice; ``auto`` decided before the model loads, for the job's largest batch."""
    from trajhpc.job import train

    t = spec.train
    if isinstance(t.gradient_checkpointing, bool):
        return t.gradient_checkpointing
    from transformers import AutoConfig

    lengths = [len(e.input_ids) for examples in train_examples.values() for e in examples]
    return train.resolve_gradient_checkpointing(
        t.gradient_checkpointing,
        config=AutoConfig.from_pretrained(str(model_path)),
        batch_tokens=train.largest_batch_tokens(lengths, t.batch_size, t.tokens_per_batch, t.examples_per_step),
        compute_dtype=dtype,
        quantization=spec.quantization,
        free_bytes=train.free_memory_bytes(device),
    )


def block_batches(spec: JobSpec, examples, stage: int, budget: int | None):
    """The steps of stage ``stage`` over one block's ``examples`` under the job's training settings
    (trajhpc.job.batching.spec_stage_batches: steps from the records' uids, the same in every arm),
    stopped at ``budget`` when given."""
    from trajhpc.job.batching import spec_stage_batches

    counts = None
    if budget is not None:
        key = f"{spec.token_budget.count}_tokens"
        counts = [count([e])[key] for e in examples]
    lengths = [len(e.input_ids) for e in examples]
    ids = [e.record.uid for e in examples]
    return spec_stage_batches(spec.train, ids, lengths, seed=spec.seed, stage=stage, budget=budget, counts=counts)


def _budgets(spec: JobSpec, tokenizer, data, own_examples, console: Console) -> list[int]:
    """Cumulative count the matched condition consumes through each stage (same plans, same seeds).

    Warns when that equals what this job's own condition consumes without a budget:
    the arm would then train exactly like its condition (e.g. ``count: supervised``
    across A/B, whose supervised tokens are the same gold calls).
    """
    budget = spec.token_budget
    k = spec.condition_k if budget.match == "last-k" else None  # JobSpec: match last-k => condition last-k
    matched = [_tokenize(spec, tokenizer, data.train[block], budget.match, k) for block in spec.order]
    cumulative = _cumulative(spec, matched)
    own = _cumulative(spec, [own_examples[block] for block in spec.order])
    if cumulative == own:
        log(
            console,
            f"warning: token_budget of arm {spec.arm} (match {budget.match}, count: {budget.count}) "
            f"equals what condition {spec.condition} consumes without a budget at every stage "
            f"({cumulative[-1]} {budget.count} tokens): this arm trains exactly like {spec.condition}"
            + ("; supervised tokens are the gold calls, the same under every condition: use count: total"
               if budget.count == "supervised" else ""),
        )
    return cumulative


def _cumulative(spec: JobSpec, examples_per_stage) -> list[int]:
    """Cumulative budget count through each stage of the unbudgeted plans over these examples."""
    out, total = [], 0
    for stage, examples in enumerate(examples_per_stage, start=1):
        plan = block_batches(spec, examples, stage, None)
        total += budget_count(spec, count([examples[i] for i in plan.consumed()]))
        out.append(total)
    return out


# ---------------------------------------------------------------- model


def load_model(prep: Prepared, adapter: Path | None):
    """(model, optimizer): the quantized base with a fresh adapter, or the checkpoint's ``adapter``."""
    from transformers import set_seed

    from trajhpc.job import train

    set_seed(prep.spec.seed)
    base = train.load_base_model(
        prep.model_path,
        quantization=prep.spec.quantization,
        compute_dtype=prep.dtype,
        device=prep.device,
        gradient_checkpointing=prep.gradient_checkpointing,
    )
    model = train.attach_lora(base, prep.spec.lora, adapter)
    return model, train.build_optimizer(model, prep.spec.train)


def start_state(prep: Prepared) -> CheckpointState:
    """Stage 0's checkpoint state: the freshly initialized adapter, nothing trained."""
    from trajhpc.job.checkpoint import CheckpointState

    return CheckpointState(job_id=prep.spec.job_id, stage=0, consumed=0, train_loss=None, train_seconds=0.0,
                           tokens=zero_tokens(budget=0 if prep.budgets else None))


def zero_tokens(stage: int = 0, *, budget: int | None = None) -> dict[str, Any]:
    """Stage 0's token entry (nothing trained); ``budget_cumulative`` 0 when the job has a budget."""
    entry: dict[str, Any] = {"stage": stage, "block": None, **{k: 0 for k in TOKEN_KEYS}}
    if budget is not None:
        entry["budget_cumulative"] = budget
    return entry


# ---------------------------------------------------------------- stages


@dataclass
class Evaluator:
    """Evaluates after every stage; with ``eval.backend: merged`` it keeps the dense copy between stages."""

    prep: Prepared
    merged: Any = None

    def __call__(self, model, state: CheckpointState) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the metrics.json entry of the checkpoint's stage, its prediction rows)."""
        from trajhpc.job.evaluate import evaluate

        prep, cfg = self.prep, self.prep.spec.eval
        if cfg.backend == "merged":
            from trajhpc.job.merged import MergedEvalModel

            # Built once per attempt; later stages only re-merge the adapter into it.
            self.merged = self.merged.sync(model) if self.merged else MergedEvalModel.from_peft(model)
        def run(items):
            return evaluate(
                model, prep.tokenizer, items, prep.blocks,
                batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, autocast_dtype=prep.autocast,
                tokens_per_batch=cfg.tokens_per_batch, backend=cfg.backend, merged=self.merged,
                gold_likelihood=cfg.gold_likelihood,
            )

        ev = run(prep.heldout)
        rows, also_under = list(ev.rows), {}
        for condition, items in prep.heldout_under.items():
            other = run(items)
            # Own rows carry no eval_condition (files without it stay valid); these say theirs.
            rows += [{**row, "eval_condition": condition} for row in other.rows]
            also_under[condition] = {"eval_seconds": other.seconds, "per_block": other.per_block}
        stage = state.stage
        entry = {
            "stage": stage,
            "trained_block": prep.spec.stage_blocks[stage - 1] if stage else None,
            "train_loss": state.train_loss,
            "train_seconds": state.train_seconds,
            "eval_seconds": ev.seconds,
            "eval_backend": cfg.backend,
            "per_block": ev.per_block,
            "eval_truncated_gold": dict(prep.truncated_gold),
        }
        if also_under:
            entry["also_under"] = also_under
        return entry, rows


def next_stage_batches(prep: Prepared, after: CheckpointState):
    """The batches of the training stage after ``after``'s stage (with what is left of a budget)."""
    from trajhpc.job.curriculum import stage_examples

    stage = after.stage + 1
    examples = stage_examples(prep.spec, prep.train_examples, stage)
    return block_batches(prep.spec, examples, stage, prep.budgets[stage - 1] - after.consumed if prep.budgets else None)


def train_stage(
    prep: Prepared, model, optimizer, plan, after: CheckpointState, on_step: Callable[..., None]
) -> tuple[CheckpointState, Any]:
    """Train the stage after ``after``'s (block ``order[stage-1]``, or what the curriculum gives it) by its
    ``plan`` (:func:`next_stage_batches`); returns (the stage's checkpoint state, the scheduler state to checkpoint)."""
    from trajhpc.job import batching, train
    from trajhpc.job.checkpoint import CheckpointState
    from trajhpc.job.curriculum import stage_examples

    spec = prep.spec
    stage = after.stage + 1
    block = spec.stage_blocks[stage - 1]
    examples = stage_examples(spec, prep.train_examples, stage)
    lengths = [len(e.input_ids) for e in examples]
    result = train.train_batches(
        model, optimizer, examples, plan, spec.train,
        pad_id=prep.tokenizer.pad_token_id, autocast_dtype=prep.autocast, on_step=on_step,
    )
    consumed = [examples[i] for i in plan.consumed()]
    counts = count(consumed)
    tokens = {
        "stage": stage, "block": block, "steps": len(plan.steps), **counts,
        "padded_tokens": batching.padded_tokens(plan, lengths), "passes": plan.passes,
        "truncated_examples": sum(e.is_truncated for e in consumed),
        "cut_examples": sum(e.cut_tokens > 0 for e in consumed),
    }
    if prep.budgets:
        tokens["budget_cumulative"] = prep.budgets[stage - 1]
    state = CheckpointState(
        job_id=spec.job_id,
        stage=stage,
        consumed=after.consumed + budget_count(spec, counts),
        train_loss=result.loss,
        train_seconds=result.seconds,
        tokens=tokens,
    )
    return state, result.scheduler_state
