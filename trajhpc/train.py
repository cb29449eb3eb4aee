"""The training recipe: QLoRA model, stage plans, length-grouped batches, a plain loop, checkpoints.

Read top to bottom, like a torchtune recipe; no trainer framework in between.

Design choices (they decide what a checkpoint must hold):

- **One optimizer for the whole job.** A single AdamW instance trains the adapter
  through every block, so its moment estimates and step counts carry over from
  block to block. The **LR schedule restarts per block**: each block gets its own
  warmup + decay (``transformers.get_scheduler``) over that block's steps, built
  on the same optimizer. A stage therefore starts from (adapter, optimizer state,
  RNG state); the previous block's finished scheduler is kept in the checkpoint
  only as a record.
- **Stages are planned before they run** (:func:`plan_stage`, pure): which
  micro-batches, over how many passes, grouped into which optimizer steps. So the
  scheduler knows its length, and a token-matched arm knows in advance at which
  batch it reaches its budget.
- **Loss on target tokens only, normalized per optimizer step.** Each micro-batch's
  summed token loss is divided by the number of target tokens in the whole step
  (the model's own loss with ``num_items_in_batch``), so gradient accumulation
  gives the same gradient as one large batch.
- **Batches are length-grouped** (sorted by length inside a seeded shuffle of
  mega-batches) and right-padded with an attention mask: no packing, so no
  attention across examples, and little padding. With ``tokens_per_batch`` a
  batch holds as many examples as fit in that many padded tokens, so short
  examples form large batches.
- **Logits only where the loss is** (:func:`supervised_loss`): the LM head runs on
  the few positions that carry a label, not on every position of the batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from trajhpc.atomic import atomic_write_bytes, atomic_write_json
from trajhpc.errors import TrajhpcError
from trajhpc.spec import LoraSpec, TrainSpec

IGNORE_INDEX = -100
# Mega-batch = this many batches; sorting inside it keeps padding low while the
# seeded shuffle across mega-batches keeps the order random.
MEGA_BATCHES = 64
# Token batches are split until padding is at most this share of a pass's computed tokens.
MAX_PADDING_SHARE = 0.03


class TrainExample(Protocol):
    """What training needs from a tokenized example (trajhpc.data.conditions.Example)."""

    input_ids: Sequence[int]
    labels: Sequence[int]


# ---------------------------------------------------------------- model


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and fp32 on CPU (CPUs without bf16 units are ~20x slower in bf16)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def load_base_model(
    path: str | Path,
    *,
    quantization: str,
    compute_dtype: torch.dtype,
    device: torch.device,
    gradient_checkpointing: bool,
) -> torch.nn.Module:
    """The frozen base: 4-bit NF4 with double quantization (QLoRA), or unquantized for ``none``."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "dtype": compute_dtype,
        "device_map": {"": device.index or 0} if device.type == "cuda" else "cpu",
    }
    if quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    from transformers.utils import logging as hf_logging

    # No per-tensor "Loading weights" bar: it floods Slurm log files.
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    ckpt_kwargs = {"use_reentrant": False}
    if quantization == "nf4":
        # On CPUs with AVX512-BF16, bitsandbytes repacks the 4-bit weights in place at
        # the first no-grad eval forward, and from then on every forward (training
        # too) takes another kernel with slightly different numbers. A resumed run
        # (no evaluation before it trains) would then diverge from an uninterrupted
        # one; keep every forward on the same kernel instead.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        model.enable_input_require_grads()
    return model


# Activations of one training step without gradient checkpointing, in copies of a
# layers x (hidden + intermediate) row per token at the compute dtype's width.
# Calibrated on an H200: Llama-3.1-8B QLoRA bf16, 8 x 1024 tokens, checkpointing off,
# peaked at 108 GiB, ~10 GB of it full-vocabulary logits (no longer computed, see
# supervised_loss): ~12 MB per token for 32 x (4096 + 14336), ~10 copies. 11 leaves headroom.
ACTIVATION_COPIES = 11
# Plan for at most this share of free memory: the rest covers the adapter, its
# optimizer state, the allocator's slack and the loss rows.
MEMORY_SHARE = 0.85


def training_memory_bytes(config: Any, batch_tokens: int, *, compute_dtype: torch.dtype, quantization: str) -> int:
    """Estimated peak memory of a training step over ``batch_tokens`` padded tokens, checkpointing off.

    From a transformers model config (hidden_size, intermediate_size,
    num_hidden_layers, attention heads, vocab_size): activations plus base weights.
    """
    width = torch.finfo(compute_dtype).bits // 8
    layers, hidden, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    activations = batch_tokens * layers * (hidden + inter) * width * ACTIVATION_COPIES
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * head_dim
    linear = layers * hidden * (2 * q + 2 * kv + 3 * inter)
    embeddings = config.vocab_size * hidden * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    weights = linear * (0.5 if quantization == "nf4" else width) + embeddings * width  # NF4: 4 bits a weight
    return int(activations + weights)


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for this job now: on the GPU, or available RAM on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil  # a dependency of peft and accelerate

    return int(psutil.virtual_memory().available)


def largest_batch_tokens(lengths: Sequence[int], batch_size: int, tokens_per_batch: int | None) -> int:
    """Padded tokens of the largest batch any plan over examples of these lengths can form."""
    longest = max(lengths, default=0)
    return max(tokens_per_batch, longest) if tokens_per_batch is not None else batch_size * longest


def resolve_gradient_checkpointing(
    setting: bool | str,
    *,
    config: Any,
    batch_tokens: int,
    compute_dtype: torch.dtype,
    quantization: str,
    free_bytes: int,
) -> bool:
    """``True``/``False`` as given; ``"auto"``: on only if a ``batch_tokens`` step would not fit in ``free_bytes``."""
    if isinstance(setting, bool):
        return setting
    need = training_memory_bytes(config, batch_tokens, compute_dtype=compute_dtype, quantization=quantization)
    return need > MEMORY_SHARE * free_bytes


def attach_lora(base: torch.nn.Module, lora: LoraSpec, adapter_dir: Path | None = None) -> torch.nn.Module:
    """A fresh LoRA adapter on every linear projection, or the one saved in ``adapter_dir``."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(frozen base, trainable adapter) parameter counts; a 4-bit weight counts as the matrix it stands for."""
    base = trainable = 0
    for p in model.parameters():
        quant_state = getattr(p, "quant_state", None)
        n = math.prod(quant_state.shape) if quant_state is not None else p.numel()
        if p.requires_grad:
            trainable += n
        else:
            base += n
    return base, trainable


def build_optimizer(model: torch.nn.Module, cfg: TrainSpec) -> torch.optim.Optimizer:
    """The job's single AdamW over the adapter weights."""
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainSpec, num_steps: int):
    """This block's LR schedule: warmup then decay over ``num_steps`` optimizer steps."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    warmup = math.ceil(cfg.warmup_ratio * num_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(num_steps, 1))


# ---------------------------------------------------------------- batches and plans


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

    def consumed(self) -> list[int]:
        """Example indices in the order they are trained on, repeats included."""
        return [i for batch in self.batches for i in batch]


def plan_stage(
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


def plan_for(
    cfg: TrainSpec,
    lengths: Sequence[int],
    *,
    seed: int,
    stage: int,
    budget: int | None = None,
    counts: Sequence[int] | None = None,
) -> StagePlan:
    """:func:`plan_stage` with a job's training settings: the one plan the job, the budget
    matching and the cost estimate all use."""
    return plan_stage(
        lengths, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=seed, stage=stage, epochs=cfg.epochs,
        max_steps=cfg.max_steps, budget=budget, counts=counts, tokens_per_batch=cfg.tokens_per_batch,
    )


def collate(examples: Sequence[TrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are -100 on padding (and wherever the example already had -100)."""
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


# ---------------------------------------------------------------- the loop


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and LM head of a causal LM, peft-wrapped or plain."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # LoRA layers are injected in place: this still trains them
    return model.get_decoder(), model.get_output_embeddings()


def supervised_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_items: int) -> torch.Tensor:
    """The model's own causal-LM loss (``num_items_in_batch=num_items``), with logits only where labels are.

    Summed float32 cross-entropy over the positions whose next-token label is not
    -100, divided by ``num_items``. The LM head runs on those rows only: a 128k
    vocabulary over every padded position would cost more memory than the layers.
    """
    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    hidden = hidden.last_hidden_state
    # Causal shift: position t predicts token t+1.
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum") / num_items



@dataclass(frozen=True)
class StageResult:
    """What a training stage reports; ``loss`` is the token-weighted mean over the stage."""

    loss: float | None
    seconds: float
    steps: int
    tokens: int  # real (unpadded) tokens trained on
    scheduler_state: dict[str, Any] | None


StepHook = Callable[[int, int, float, int], None]  # (step, n_steps, step loss, tokens in step)


def train_stage(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    examples: Sequence[TrainExample],
    plan: StagePlan,
    cfg: TrainSpec,
    *,
    pad_id: int,
    autocast_dtype: torch.dtype | None = None,
    on_step: StepHook | None = None,
) -> StageResult:
    """Train the adapter on one block following ``plan``; the LR schedule restarts here."""
    started = time.perf_counter()
    n_steps = len(plan.steps)
    if n_steps == 0:
        return StageResult(None, 0.0, 0, 0, None)
    device = next(p for p in model.parameters()).device
    params = trainable_parameters(model)
    scheduler = build_scheduler(optimizer, cfg, n_steps)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None and autocast_dtype != torch.float32
        else contextlib.nullcontext()
    )
    # fp16 needs loss scaling (bf16 and fp32 don't); a fresh scaler per stage keeps
    # stage boundaries free of extra state.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    model.train()
    loss_sum, target_sum, token_sum, first = 0.0, 0, 0, 0
    for step, n_micro in enumerate(plan.steps):
        micro = plan.batches[first : first + n_micro]
        first += n_micro
        n_target = sum(target_tokens(examples[i]) for b in micro for i in b)
        step_loss, step_tokens = 0.0, 0
        for batch_idx in micro:
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_idx], pad_id).items()}
            with autocast:
                # Summed over target tokens, divided by the step's target count.
                loss = supervised_loss(model, batch, max(n_target, 1))
            scaler.scale(loss).backward()
            step_loss += loss.item()
            step_tokens += int(batch["attention_mask"].sum())
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += step_loss * n_target
        target_sum += n_target
        token_sum += step_tokens
        if on_step is not None:
            on_step(step + 1, n_steps, step_loss, step_tokens)
    loss = loss_sum / target_sum if target_sum else None
    return StageResult(loss, time.perf_counter() - started, n_steps, token_sum, scheduler.state_dict())


# ---------------------------------------------------------------- RNG and checkpoints


RNG_SCHEMA = "trajhpc.rng/1"


def rng_state() -> dict[str, Any]:
    """Every RNG a stage draws from (dropout uses torch's; data order is seeded separately),
    as tensors and plain values only, so that ``torch.load(weights_only=True)`` reads it back."""
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "schema": RNG_SCHEMA,
        # Mersenne Twister words are < 2**32: exact in int64.
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"name": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"]))
    np.random.set_state(
        (npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_tensors(path: Path) -> Any:
    """A torch file of the job directory, read with ``weights_only=True``: tensors and plain values only.

    Nothing executable is ever loaded from a job directory: a file that needs real
    unpickling (crafted, or written by trajhpc before RNG states were plain tensors)
    is refused, naming the file; so is a damaged one. Both are TrajhpcErrors.
    """
    import pickle

    start_over = f"delete {path.parent.parent} to start the job over"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrajhpcError(f"{path}: missing from the checkpoint; {start_over}") from None
    except pickle.UnpicklingError as err:
        # torch's own message advises allowlisting the global: exactly what must not happen here.
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise TrajhpcError(
                f"{path}: refusing to load it: it needs unpickling ({unsafe.group(1)}), which could run code; "
                f"{start_over}"
            ) from None
        raise TrajhpcError(f"{path}: damaged, not a readable torch file; {start_over}") from None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a damaged file
        raise TrajhpcError(f"{path}: damaged, not a readable torch file ({type(err).__name__}); {start_over}") from None


CHECKPOINT = "checkpoint"
_TMP, _OLD = ".checkpoint.tmp", ".checkpoint.old"
_STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint


def _torch_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _sort_target_modules(adapter_dir: Path) -> None:
    """peft writes ``target_modules`` from a set, so its order varies between processes: sort it."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        atomic_write_json(path, config)


def save_checkpoint(
    job_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    scheduler_state: dict[str, Any] | None = None,
) -> Path:
    """Write adapter, optimizer, scheduler, RNG and ``meta`` (stage, counters) as ``job_dir/checkpoint``.

    Written into a temp folder, then swapped in by renames; :func:`find_checkpoint`
    repairs a swap interrupted between its two renames. A write that fails (disk
    full) removes the temp folder and is a TrajhpcError; the previous checkpoint stays.
    """
    tmp, old, final = job_dir / _TMP, job_dir / _OLD, job_dir / CHECKPOINT
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp / "adapter"))
        _sort_target_modules(tmp / "adapter")
        atomic_write_bytes(tmp / "optimizer.pt", _torch_bytes(optimizer.state_dict()))
        atomic_write_bytes(tmp / "scheduler.pt", _torch_bytes(scheduler_state))
        atomic_write_bytes(tmp / "rng.pt", _torch_bytes(rng_state()))
        atomic_write_json(tmp / _STATE_FILE, meta)
    except (OSError, TrajhpcError) as err:  # not on a kill (BaseException): that leaves things as they are
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise TrajhpcError(f"cannot write the checkpoint in {tmp}: {err.strerror or err}") from err
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(job_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The complete checkpoint in ``job_dir`` and its meta, or None (half-written ones are ignored)."""
    tmp, old, final = job_dir / _TMP, job_dir / _OLD, job_dir / CHECKPOINT
    if not (final / _STATE_FILE).exists():
        # Killed between the two renames of save_checkpoint: the newest complete one wins.
        for candidate in (tmp, old):
            if (candidate / _STATE_FILE).exists():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(candidate, final)
                break
        else:
            return None
    try:
        return final, json.loads((final / _STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise TrajhpcError(
            f"{final / _STATE_FILE}: unreadable ({err}); delete {job_dir} to start the job over"
        ) from None


def restore_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load adapter weights (in place), optimizer state and RNG state from ``ckpt``.

    The uninterrupted run calls this at every stage boundary too, so it and a
    resumed run continue from exactly the same bytes.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = ckpt / "adapter" / "adapter_model.safetensors"
    try:
        weights = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise TrajhpcError(f"{path}: damaged, not a readable safetensors file ({type(err).__name__})") from None
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"checkpoint {ckpt}: unexpected adapter keys {result.unexpected_keys[:3]}")
    optimizer.load_state_dict(load_tensors(ckpt / "optimizer.pt"))
    rng = load_tensors(ckpt / "rng.pt")
    try:
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise TrajhpcError(
            f"{ckpt / 'rng.pt'}: not a trajhpc RNG state ({type(err).__name__}: {err}); "
            f"delete {ckpt.parent} to start the job over"
        ) from None
