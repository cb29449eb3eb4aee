"""Evaluation: batched greedy generation on held-out prompts, scored per block.

Prompts are left-padded (generation appends on the right), sorted by length so
each batch wastes little padding, and decoded from the new tokens only. Batches
hold ``batch_size`` rows, or as many as fit in ``tokens_per_batch`` tokens
(:func:`eval_batches`). ``backend="merged"`` generates through a dense copy with
the adapter merged (:mod:`trajhpc.job.merged`) instead of the training model.
Generation stops at the end-of-turn token. With ``gold_likelihood`` every item is also read
with its gold call appended (:func:`teacher_forced`). Scores come from
:func:`trajhpc.job.scoring.score` and are summarized per block by
:func:`trajhpc.job.scoring.summarize`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from trajhpc.data.calls import gold_name
from trajhpc.job.scoring import GOLD_KEYS, mean_gold_scores, score, summarize
from trajhpc.job.train import autocast


@dataclass(frozen=True)
class HeldOut:
    """One held-out example, ready for generation."""

    item: str  # the record's ``source#index`` (Record.uid): unique, the same in every arm and job
    block: str
    dialogue_key: str
    step: int
    prompt_ids: tuple[int, ...]
    gold: str
    gold_tokens: int = 0  # tokens generation needs to write the gold call (end of turn excluded)
    # What the prompt already carries of the gold call (trajhpc.job.baselines.diagnostics).
    diagnostics: Mapping[str, Any] = field(default_factory=dict)
    # How the prompt was shortened to fit (trajhpc.data.conditions.Example.truncated / cut_tokens).
    truncated: int = 0
    cut_tokens: int = 0
    # The gold call's tokens (the first ``gold_tokens`` of the target), for teacher-forced scoring.
    gold_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EvalResult:
    per_block: dict[str, dict[str, Any]]  # block -> trajhpc.job.scoring.summarize(...)
    rows: list[dict[str, Any]]  # one prediction row per held-out example, input order
    seconds: float


def gold_token_count(target_ids: Sequence[int], special_ids: Collection[int]) -> int:
    """Tokens needed to generate the gold call: the target ids without the special tokens
    (end of turn) the chat template puts after it."""
    n = len(target_ids)
    while n and target_ids[n - 1] in special_ids:
        n -= 1
    return n


def truncated_gold(items: Sequence[HeldOut], blocks: Sequence[str], max_new_tokens: int) -> dict[str, int]:
    """Per block, the held-out items whose gold call is longer than ``max_new_tokens``:
    generation stops before the call is complete, so they can never be exact."""
    counts = {b: 0 for b in blocks}
    for it in items:
        if it.gold_tokens > max_new_tokens:
            counts[it.block] = counts.get(it.block, 0) + 1
    return counts


def prompt_hash(prompt_ids: Sequence[int]) -> str:
    """Short stable hash of the exact prompt the model saw."""
    return hashlib.sha256(",".join(map(str, prompt_ids)).encode()).hexdigest()[:12]


def end_of_turn_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Token ids that end the assistant's turn: the tokenizer's eos plus the model's generation eos."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def eval_batches(
    lengths: Sequence[int], *, batch_size: int, max_new_tokens: int, tokens_per_batch: int | None = None
) -> list[list[int]]:
    """Prompt indices in generation batches, longest prompts first (ties in input order).

    Without ``tokens_per_batch``: ``batch_size`` rows per batch. With it: each batch
    takes rows while rows x (its longest prompt + ``max_new_tokens``) stays within
    ``tokens_per_batch`` (at least one row), so short prompts share large batches.
    """
    # Longest first: similar lengths share a batch, and the memory peak comes first.
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if tokens_per_batch is None:
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        # The batch's first row is its longest, so the width is fixed once it starts.
        if batches and (len(batches[-1]) + 1) * (lengths[batches[-1][0]] + max_new_tokens) <= tokens_per_batch:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``rows`` padded on the left, so every row ends at the last column."""
    ids = [torch.tensor(list(r), dtype=torch.long) for r in rows]
    masks = [torch.ones(len(x), dtype=torch.long) for x in ids]
    return (pad_sequence(ids, batch_first=True, padding_value=pad_id, padding_side="left"),
            pad_sequence(masks, batch_first=True, padding_value=0, padding_side="left"))


def generate_greedy(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    batch_size: int,
    max_new_tokens: int,
    autocast_dtype: torch.dtype | None = None,
    tokens_per_batch: int | None = None,
) -> list[list[int]]:
    """Greedy continuations (new tokens only, up to the first end-of-turn) for each prompt, input order.

    ``autocast_dtype`` (bf16/fp16 on CUDA) runs generation under the same autocast as training.
    Batches: :func:`eval_batches`.
    """
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id,
        use_cache=True,
    )
    device = next(model.parameters()).device
    batches = eval_batches(
        [len(p) for p in prompts], batch_size=batch_size, max_new_tokens=max_new_tokens,
        tokens_per_batch=tokens_per_batch,
    )
    outputs: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device.type, autocast_dtype):
            for idx in batches:
                input_ids, attention_mask = left_padded([prompts[i] for i in idx], pad_id)
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
                for row, i in zip(out[:, input_ids.shape[1] :].tolist(), idx):
                    cut = next((j for j, t in enumerate(row) if t in eos_ids), len(row))
                    outputs[i] = row[:cut]
    finally:
        model.train(was_training)
    return outputs


def gold_logit_slice(keep: int, gold_len: int) -> slice:
    """Of the last ``keep`` logit positions of a left-padded prompt + gold row, those that predict
    the ``gold_len`` gold tokens: position p predicts token p + 1, so the last position predicts
    nothing and the gold's first token is predicted by the prompt's last."""
    return slice(keep - gold_len - 1, keep - 1)


def teacher_forced(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    golds: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    tokens_per_batch: int | None = None,
) -> list[tuple[float | None, float | None]]:
    """Per item, (token accuracy, mean negative log-likelihood in nats) of its gold call given its
    prompt: the fraction of gold tokens that are the model's argmax after the true prefix, and their
    mean -log p. (None, None) for an empty gold. Batched like generation (:func:`eval_batches`), with
    only the logits of the gold positions computed (``logits_to_keep``)."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(g) for p, g in zip(prompts, golds)]
    batches = eval_batches([len(x) for x in seqs], batch_size=batch_size, max_new_tokens=0,
                           tokens_per_batch=tokens_per_batch)
    out: list[tuple[float | None, float | None]] = [(None, None)] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device.type, autocast_dtype):
            for idx in batches:
                idx = [i for i in idx if golds[i]]
                if not idx:
                    continue
                input_ids, attention_mask = left_padded([seqs[i] for i in idx], pad_id)
                # Positions count from each row's first real token, as generation counts them.
                position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
                keep = max(len(golds[i]) for i in idx) + 1
                logits = model(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    position_ids=position_ids.to(device), logits_to_keep=keep, use_cache=False,
                ).logits
                for row, i in enumerate(idx):
                    gold = torch.tensor(list(golds[i]), dtype=torch.long, device=logits.device)
                    scores = logits[row, gold_logit_slice(keep, len(gold))].float()
                    nll = torch.nn.functional.cross_entropy(scores, gold)
                    acc = (scores.argmax(-1) == gold).float().mean()
                    out[i] = (acc.item(), nll.item())
    finally:
        model.train(was_training)
    return out


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[HeldOut],
    blocks: Sequence[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    autocast_dtype: torch.dtype | None = None,
    tokens_per_batch: int | None = None,
    backend: str = "peft",
    merged: Any | None = None,
    gold_likelihood: bool = False,
) -> EvalResult:
    """Generate for every held-out item (all blocks batched together) and score per block.

    ``backend="merged"`` generates through ``merged`` (a :class:`trajhpc.job.merged.MergedEvalModel`
    already synced to ``model``, which a job keeps across stages), or through a copy built
    here; ``model`` itself is then only read.
    """
    started = time.perf_counter()
    if backend == "merged":
        from trajhpc.job.merged import MergedEvalModel

        generator = (merged or MergedEvalModel.from_peft(model)).model
    elif backend == "peft":
        generator = model
    else:
        raise ValueError(f"unknown eval backend {backend!r}")
    new_ids = generate_greedy(
        generator,
        [it.prompt_ids for it in items],
        pad_id=tokenizer.pad_token_id,
        eos_ids=end_of_turn_ids(tokenizer, model),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        autocast_dtype=autocast_dtype,
        tokens_per_batch=tokens_per_batch,
    )
    predictions = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]
    forced = (
        teacher_forced(
            generator, [it.prompt_ids for it in items], [it.gold_ids for it in items], pad_id=tokenizer.pad_token_id,
            batch_size=batch_size, autocast_dtype=autocast_dtype, tokens_per_batch=tokens_per_batch,
        ) if gold_likelihood else None
    )
    rows, scores_by_block, forced_by_block = [], {b: [] for b in blocks}, {b: [] for b in blocks}
    for k, (it, pred) in enumerate(zip(items, predictions)):
        s = score(pred, it.gold)
        scores_by_block[it.block].append((s, gold_name(it.gold)))
        if forced:
            forced_by_block[it.block].append(forced[k])
        rows.append(
            {
                "item": it.item,
                "block": it.block,
                "dialogue_key": it.dialogue_key,
                "step": it.step,
                "prompt_hash": prompt_hash(it.prompt_ids),
                "prediction": pred,
                "gold": it.gold,
                **it.diagnostics,
                **s.to_dict(),
                **(dict(zip(GOLD_KEYS, forced[k])) if forced else {}),
            }
        )
    per_block = {
        b: summarize([s for s, _ in pairs], [g for _, g in pairs]) for b, pairs in scores_by_block.items()
    }
    if forced:
        for b, summary in per_block.items():
            summary.update(mean_gold_scores(forced_by_block[b]))
    return EvalResult(per_block, rows, time.perf_counter() - started)
