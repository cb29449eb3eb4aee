"""Stage plans and batches: which examples form each optimizer step, over how many passes, split
into which micro-batches (pure), and how a micro-batch becomes tensors (:func:`collate`).

A job's plan (:func:`spec_stage_batches`, recipe 2) decides the **steps** from the examples'
identities (``Record.uid``), the seed, the stage and the pass only — never from token
lengths — so every arm of a unit (same seed, same order, the same records under another
condition) takes the same number of optimizer steps with the same examples in each
(:func:`plan_steps`). Each pass is a seeded shuffle of the block's ids in sorted order,
cut into steps of ``examples_per_step``; epochs and ``max_steps`` count these steps, and a
token budget stops on a prefix of the same step sequence. Each step records a short hash
of its example ids (:func:`examples_hash`), written to ``train_log.jsonl``.

**Micro-batches only inside a step**, grouped by the arm's own lengths: the step's
examples sorted by length, cut into ``batch_size`` rows, or with ``tokens_per_batch`` cut
into the fewest runs whose rows x longest row stays within that cap, with the least
padding among those (an example longer than the cap forms its own micro-batch). They run as gradient accumulation whose loss is normalised
over the whole step, so splitting a step leaves its gradient unchanged up to rounding.
Batches are right-padded with an attention mask: no packing, no attention across examples.

:func:`stage_batches` is the older plan (recipe 1: batches grouped by each arm's own
lengths, steps of ``grad_accum`` batches); only the tiny model's pre-training still uses it,
so the tiny-v3 weights stay what they were.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.conditions import IGNORE_INDEX
from trajhpc.spec import TrainSpec

if TYPE_CHECKING:  # torch is imported by collate only: planning (cost estimates) does not need it
    import torch

# Mega-batch = this many batches; sorting inside it keeps padding low while the
# seeded shuffle across mega-batches keeps the order random.
MEGA_BATCHES = 64
# Token batches are split until padding is at most this share of a pass's computed tokens.
MAX_PADDING_SHARE = 0.03


class TrainExample(Protocol):
    """What training needs from a tokenized example (trajhpc.data.conditions.Example)."""

    input_ids: Sequence[int]
    labels: Sequence[int]



def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator, mega_batches: int = MEGA_BATCHES
) -> list[tuple[int, ...]]:
    """One pass over the examples as batches of indices, grouped by length.

    Seeded shuffle, then sort by length inside each mega-batch of
    ``batch_size * mega_batches`` examples, cut into batches, shuffle the batch
    order, and put the longest batch first (an out-of-memory shows at once).
    """
    perm = [int(i) for i in rng.permutation(len(lengths))]
    mega = batch_size * mega_batches
    batches: list[tuple[int, ...]] = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start : start + mega], key=lambda i: lengths[i])  # stable: ties keep shuffled order
        # Cut from the short end, so a smaller last batch holds the longest (sparsest) examples.
        batches += [tuple(chunk[j : j + batch_size]) for j in range(0, len(chunk), batch_size)]
    return _shuffle_longest_first(batches, lengths, rng)


def _shuffle_longest_first(
    batches: list[tuple[int, ...]], lengths: Sequence[int], rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """Seeded batch order, with the batch of the longest example first (an out-of-memory shows at once)."""
    batches = [batches[int(i)] for i in rng.permutation(len(batches))]
    if batches:
        longest = max(range(len(batches)), key=lambda b: (max(lengths[i] for i in batches[b]), -b))
        batches.insert(0, batches.pop(longest))
    return batches


def token_batches(
    lengths: Sequence[int],
    tokens_per_batch: int,
    rng: np.random.Generator,
    mega_batches: int = MEGA_BATCHES,
    max_padding: float = MAX_PADDING_SHARE,
) -> list[tuple[int, ...]]:
    """One pass over the examples as length-grouped batches of at most ``tokens_per_batch`` padded tokens.

    Like :func:`length_grouped_batches`: a seeded shuffle, then inside each
    mega-batch (about ``mega_batches`` batches' worth of examples at the mean
    length) the examples sorted by length are filled into batches while rows x
    longest row stays within ``tokens_per_batch`` (an example longer than that
    forms its own batch). Where lengths are sparse that leaves too much padding,
    so batches are then split where a split saves the most padding, until the
    mega-batch's padding share is at most ``max_padding`` — a bound on the pass,
    not on each batch, so dense length ranges keep their large batches.
    """
    perm = [int(i) for i in rng.permutation(len(lengths))]
    mean = sum(lengths) / len(lengths) if lengths else 1.0
    mega = max(1, round(tokens_per_batch / max(mean, 1.0) * mega_batches))
    batches: list[tuple[int, ...]] = []
    for start in range(0, len(perm), mega):
        ranked = sorted(perm[start : start + mega], key=lambda i: lengths[i])  # stable: ties keep shuffled order
        batches += _split_for_padding(_fill(ranked, lengths, tokens_per_batch), lengths, max_padding)
    return _shuffle_longest_first(batches, lengths, rng)


def _fill(ranked: Sequence[int], lengths: Sequence[int], limit: int) -> list[list[int]]:
    """Examples in ascending length, cut into batches whose rows x longest stays within ``limit``."""
    batches: list[list[int]] = []
    for i in ranked:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= limit:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _split_for_padding(batches: list[list[int]], lengths: Sequence[int], max_padding: float) -> list[tuple[int, ...]]:
    """Split length-sorted batches, best saving first, until padding is at most ``max_padding`` of all tokens.

    Cutting a sorted batch after its j-th row saves j x (longest - length of row j)
    padded tokens; every split only lowers the padded total, so this ends.
    """
    real = sum(lengths[i] for b in batches for i in b)

    def padded() -> int:
        return sum(len(b) * lengths[b[-1]] for b in batches)

    total = padded()
    while total - real > max_padding * total:
        best, where, saving = -1, 0, 0
        for k, b in enumerate(batches):
            top = lengths[b[-1]]
            for j in range(1, len(b)):
                gain = j * (top - lengths[b[j - 1]])
                if gain > saving:
                    best, where, saving = k, j, gain
        if best < 0:  # only equal lengths left: nothing to save
            break
        b = batches[best]
        batches[best : best + 1] = [b[:where], b[where:]]
        total -= saving
    return [tuple(b) for b in batches]


@dataclass(frozen=True)
class StagePlan:
    """What one training stage will do, decided before it starts."""

    batches: tuple[tuple[int, ...], ...]  # micro-batches of example indices, in training order
    steps: tuple[int, ...]  # micro-batches per optimizer step; sums to len(batches)
    passes: int  # passes over the block started (each with a fresh seeded shuffle)
    examples: tuple[str, ...] = ()  # per step, :func:`examples_hash` of its example ids (empty: recipe-1 plan)

    def consumed(self) -> list[int]:
        """Example indices in the order they are trained on, repeats included."""
        return [i for batch in self.batches for i in batch]


def stage_batches(
    lengths: Sequence[int],
    *,
    batch_size: int,
    grad_accum: int,
    seed: int,
    stage: int,
    epochs: float = 1.0,
    max_steps: int | None = None,
    budget: int | None = None,
    counts: Sequence[int] | None = None,
    tokens_per_batch: int | None = None,
) -> StagePlan:
    """Plan one stage over a block of ``len(lengths)`` examples.

    Micro-batches come from consecutive passes, pass ``p`` shuffled by
    ``(seed, stage, p)``: :func:`length_grouped_batches` of ``batch_size``, or
    :func:`token_batches` when ``tokens_per_batch`` is set. Without a budget the
    stage runs ``max_steps`` optimizer steps if set, else ``epochs`` passes (whole
    passes, then that fraction of the next pass's batches). With a ``budget`` it
    stops at the first micro-batch whose cumulative ``counts`` (tokens per
    example) reach the budget, so it overshoots by less than one batch; a budget
    <= 0 plans nothing.
    """
    if not lengths:
        raise TrajhpcError(f"stage {stage}: the block has no training examples")

    def one_pass(p: int) -> list[tuple[int, ...]]:
        rng = np.random.default_rng([seed, stage, p])
        if tokens_per_batch is None:
            return length_grouped_batches(lengths, batch_size, rng)
        return token_batches(lengths, tokens_per_batch, rng)

    def stream():
        p = 0
        while True:
            for batch in one_pass(p):
                yield p, batch
            p += 1

    planned: list[tuple[int, tuple[int, ...]]] = []  # (pass, batch)
    if budget is not None:
        if counts is None or len(counts) != len(lengths):
            raise ValueError("a budget needs one token count per example")
        if sum(counts) <= 0 and budget > 0:
            raise TrajhpcError(f"stage {stage}: no example has a token to count toward the budget")
        total = 0
        it = stream()
        while total < budget:
            planned.append(next(it))
            total += sum(counts[i] for i in planned[-1][1])
    elif max_steps is not None:
        it = stream()
        planned = [next(it) for _ in range(max_steps * grad_accum)]
    elif tokens_per_batch is None:
        per_pass = math.ceil(len(lengths) / batch_size)
        it = stream()
        planned = [next(it) for _ in range(max(1, math.ceil(round(epochs * per_pass, 6))))]
    else:
        # A pass has a data-dependent number of token batches: count the last pass's own.
        whole = math.floor(epochs)
        for p in range(whole):
            planned += [(p, b) for b in one_pass(p)]
        last = one_pass(whole)
        planned += [(whole, b) for b in last[: math.ceil(round((epochs - whole) * len(last), 6))]]
        planned = planned or [(0, one_pass(0)[0])]
    batches = [b for _, b in planned]
    steps = [grad_accum] * (len(batches) // grad_accum)
    if len(batches) % grad_accum:
        steps.append(len(batches) % grad_accum)
    return StagePlan(tuple(batches), tuple(steps), planned[-1][0] + 1 if planned else 0)


def examples_hash(ids: Sequence[str]) -> str:
    """12 hex digits of sha256 over the ids sorted, one per line: the same examples, the same hash
    (in whichever order a step holds them)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:12]


def pass_steps(ids: Sequence[str], examples_per_step: int, *, seed: int, stage: int, p: int) -> list[tuple[int, ...]]:
    """Pass ``p`` of a stage as steps of example indices: a ``(seed, stage, p)``-seeded shuffle of
    the ids in sorted order, cut into steps of ``examples_per_step`` (the last may be shorter).

    Only the ids decide it: the same ids in another list order give the same steps of ids.
    """
    canonical = sorted(range(len(ids)), key=lambda i: ids[i])
    order = [canonical[int(j)] for j in np.random.default_rng([seed, stage, p]).permutation(len(ids))]
    return [tuple(order[s : s + examples_per_step]) for s in range(0, len(order), examples_per_step)]


def micro_batches(
    step: Sequence[int], lengths: Sequence[int], *, batch_size: int, tokens_per_batch: int | None
) -> list[tuple[int, ...]]:
    """One step's examples as micro-batches grouped by their (this arm's) lengths, longest first.

    Sorted by length (ties keep the step's order), cut into ``batch_size`` rows from the
    short end, or with ``tokens_per_batch`` by :func:`_cut_fewest`.
    """
    ranked = sorted(step, key=lambda i: lengths[i])
    if tokens_per_batch is None:
        batches = [ranked[j : j + batch_size] for j in range(0, len(ranked), batch_size)]
    else:
        batches = _cut_fewest(ranked, lengths, tokens_per_batch)
    # The longest first: an out-of-memory shows at a step's first forward.
    return [tuple(b) for b in reversed(batches)]


def _cut_fewest(ranked: Sequence[int], lengths: Sequence[int], limit: int) -> list[list[int]]:
    """Examples in ascending length, cut into the fewest runs whose rows x longest stays within
    ``limit`` (an example longer than that alone), and among those the least padding.

    Exact over a step (dynamic programming over cut points, quadratic in its size); where
    greedy filling leaves the last run of long examples with the short ones' padding, this
    moves the cut.
    """
    n = len(ranked)
    best: list[tuple[int, int, int]] = [(0, 0, 0)] + [(n + 1, 0, 0)] * n  # (runs, padded, start of last run)
    for j in range(1, n + 1):
        top = lengths[ranked[j - 1]]
        for i in range(j - 1, -1, -1):
            if j - i > 1 and (j - i) * top > limit:
                break
            runs, pad, _ = best[i]
            cand = (runs + 1, pad + (j - i) * top, i)
            if cand[:2] < best[j][:2]:
                best[j] = cand
    runs: list[list[int]] = []
    j = n
    while j > 0:
        i = best[j][2]
        runs.append(list(ranked[i:j]))
        j = i
    return runs[::-1]


def plan_steps(
    ids: Sequence[str],
    lengths: Sequence[int],
    *,
    examples_per_step: int,
    batch_size: int,
    seed: int,
    stage: int,
    epochs: float = 1.0,
    max_steps: int | None = None,
    budget: int | None = None,
    counts: Sequence[int] | None = None,
    tokens_per_batch: int | None = None,
) -> StagePlan:
    """Plan one stage over a block of examples identified by ``ids`` (recipe 2).

    Steps come from consecutive passes (:func:`pass_steps`). Without a budget the stage
    runs ``max_steps`` steps if set, else ``epochs`` x the steps of a pass (rounded up, at
    least one). With a ``budget`` it stops at the first step whose cumulative ``counts``
    (tokens per example, the arm's own) reach it: a prefix of the same step sequence, into
    further passes when the budget is larger than a pass; a budget <= 0 plans nothing.
    Each step is split by :func:`micro_batches`; only that depends on ``lengths``.
    """
    if not ids:
        raise TrajhpcError(f"stage {stage}: the block has no training examples")
    if len(lengths) != len(ids):
        raise ValueError("one length per example id")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = next(i for i in ids if i in seen or seen.add(i))
        raise TrajhpcError(f"stage {stage}: example id {twice!r} occurs twice in the block; ids must be unique")

    def stream():
        p = 0
        while True:
            for step in pass_steps(ids, examples_per_step, seed=seed, stage=stage, p=p):
                yield p, step
            p += 1

    it = stream()
    planned: list[tuple[int, tuple[int, ...]]] = []  # (pass, step)
    if budget is not None:
        if counts is None or len(counts) != len(ids):
            raise ValueError("a budget needs one token count per example")
        if sum(counts) <= 0 and budget > 0:
            raise TrajhpcError(f"stage {stage}: no example has a token to count toward the budget")
        total = 0
        while total < budget:
            planned.append(next(it))
            total += sum(counts[i] for i in planned[-1][1])
    else:
        per_pass = math.ceil(len(ids) / examples_per_step)
        n = max_steps if max_steps is not None else max(1, math.ceil(round(epochs * per_pass, 6)))
        planned = [next(it) for _ in range(n)]
    batches: list[tuple[int, ...]] = []
    steps: list[int] = []
    for _, step in planned:
        micro = micro_batches(step, lengths, batch_size=batch_size, tokens_per_batch=tokens_per_batch)
        batches += micro
        steps.append(len(micro))
    hashes = tuple(examples_hash([ids[i] for i in step]) for _, step in planned)
    return StagePlan(tuple(batches), tuple(steps), planned[-1][0] + 1 if planned else 0, hashes)


def examples_per_step(cfg: TrainSpec) -> int:
    """Examples in one optimizer step: ``examples_per_step``, by default ``batch_size`` x ``grad_accum``."""
    return cfg.examples_per_step if cfg.examples_per_step is not None else cfg.batch_size * cfg.grad_accum


def spec_stage_batches(
    cfg: TrainSpec,
    ids: Sequence[str],
    lengths: Sequence[int],
    *,
    seed: int,
    stage: int,
    budget: int | None = None,
    counts: Sequence[int] | None = None,
) -> StagePlan:
    """:func:`plan_steps` with a job's training settings: the one plan the job, the budget
    matching and the cost estimate all use."""
    return plan_steps(
        ids, lengths, examples_per_step=examples_per_step(cfg), batch_size=cfg.batch_size, seed=seed, stage=stage,
        epochs=cfg.epochs, max_steps=cfg.max_steps, budget=budget, counts=counts,
        tokens_per_batch=cfg.tokens_per_batch,
    )


def legacy_stage_batches(cfg: TrainSpec, lengths: Sequence[int], *, seed: int, stage: int) -> StagePlan:
    """:func:`stage_batches` (recipe 1) with these training settings: the tiny model's pre-training plan."""
    return stage_batches(
        lengths, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=seed, stage=stage, epochs=cfg.epochs,
        max_steps=cfg.max_steps, tokens_per_batch=cfg.tokens_per_batch,
    )


def collate(examples: Sequence[TrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are -100 on padding (and wherever the example already had -100)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    ids = [torch.tensor(list(e.input_ids), dtype=torch.long) for e in examples]
    labels = [torch.tensor(list(e.labels), dtype=torch.long) for e in examples]
    masks = [torch.ones(len(x), dtype=torch.long) for x in ids]
    return {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_id),
        "attention_mask": pad_sequence(masks, batch_first=True, padding_value=0),
        "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
    }


def padded_tokens(plan: StagePlan, lengths: Sequence[int]) -> int:
    """Tokens actually computed, padding included: batch size x longest example, summed."""
    return sum(len(b) * max(lengths[i] for i in b) for b in plan.batches)


def target_tokens(example: TrainExample) -> int:
    """Positions that carry loss after the causal shift (the first token is never predicted)."""
    return sum(1 for label in list(example.labels)[1:] if label != IGNORE_INDEX)
