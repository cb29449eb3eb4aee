"""Training: the QLoRA model, its memory estimate, optimizer and schedule, and a plain loop over a stage plan.

Plans and batches are :mod:`trajhpc.job.batching`; checkpoints :mod:`trajhpc.job.checkpoint`.

Read top to bottom, like a torchtune recipe; no trainer framework in between.

Design choices (they decide what a checkpoint must hold):

- **One optimizer for the whole job.** A single AdamW instance trains the adapter
  through every block, so its moment estimates and step counts carry over from
  block to block. The **LR schedule restarts per block**: each block gets its own
  warmup + decay (``transformers.get_scheduler``) over that block's steps, built
  on the same optimizer. A stage therefore starts from (adapter, optimizer state,
  RNG state); the previous block's finished scheduler is kept in the checkpoint
  only as a record.
- **Stages are planned before they run** (:mod:`trajhpc.job.batching`, pure): which
  examples form each optimizer step (from their ids, never their lengths: every arm
  of a unit takes the same steps), split into which micro-batches. So the scheduler
  knows its length, and a token-matched arm knows in advance at which step it
  reaches its budget.
- **The first step of a stage learns**: warm-up starts at lr / warm-up steps (not at
  0) and reaches lr at the last warm-up step; a one-step stage runs at lr.
- **Loss on target tokens only, normalized per optimizer step.** Each micro-batch's
  summed token loss is divided by the number of target tokens in the whole step
  (the model's own loss with ``num_items_in_batch``), so gradient accumulation
  gives the same gradient as one large batch.
- **Micro-batches are length-grouped inside a step** and right-padded with an
  attention mask: no packing, so no attention across examples. With
  ``tokens_per_batch`` a micro-batch holds as many of the step's examples as fit in
  that many padded tokens, so short examples form large micro-batches.
- **Logits only where the loss is** (:func:`supervised_loss`): the LM head runs on
  the few positions that carry a label, not on every position of the batch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from trajhpc.job.batching import IGNORE_INDEX, StagePlan, TrainExample, collate, target_tokens
from trajhpc.job.modelfiles import check_safetensors
from trajhpc.spec import LoraSpec, TrainSpec

# ---------------------------------------------------------------- model


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and fp32 on CPU (CPUs without bf16 units are ~20x slower in bf16)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def autocast_dtype_for(device: torch.device, compute_dtype: torch.dtype) -> torch.dtype | None:
    """What training and generation autocast to: the compute dtype on CUDA (mixed precision);
    None on CPU, where the weights already are in the compute dtype."""
    return compute_dtype if device.type == "cuda" else None


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device_type``; a no-op for None and fp32."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


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
    for weights in sorted(Path(path).glob("*.safetensors")):  # transformers' error names no file
        check_safetensors(weights, "copy the model folder again (or delete a cached one so that it is rebuilt)")
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
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
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


def largest_batch_tokens(
    lengths: Sequence[int], batch_size: int, tokens_per_batch: int | None, examples_per_step: int | None = None
) -> int:
    """Padded tokens of the largest micro-batch any plan over examples of these lengths can form
    (a step of ``examples_per_step`` examples holds at most that many rows)."""
    longest = max(lengths, default=0)
    if tokens_per_batch is not None:
        return max(tokens_per_batch, longest)
    rows = batch_size if examples_per_step is None else min(batch_size, examples_per_step)
    return rows * longest


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

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if adapter_dir is not None:
        from trajhpc.job.checkpoint import check_adapter_settings

        check_adapter_settings(adapter_dir, lora, _all_linear(config, base) if targets == "all-linear" else None)
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    return get_peft_model(base, config)


def _all_linear(config: Any, base: torch.nn.Module) -> list[str] | None:
    """The module names peft writes for ``target_modules: all-linear`` on ``base`` (None if this peft cannot say)."""
    from peft.tuners import tuners_utils

    expand = getattr(tuners_utils, "_maybe_include_all_linear_layers", None)
    if expand is None:
        return None
    import copy

    targets = expand(copy.deepcopy(config), base).target_modules
    return sorted(targets) if isinstance(targets, (set, list, tuple)) else None


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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainSpec, num_steps: int, *, warmup_from_zero: bool = False):
    """This block's LR schedule: warm-up then decay over ``num_steps`` optimizer steps.

    Warm-up step ``s`` (0-based) of ``w`` runs at lr x (s + 1) / w, so the first step
    already learns and a one-step stage runs at lr; then the ``schedule``'s decay, as
    transformers defines it. ``warmup_from_zero`` is the recipe-1 warm-up (lr x s / w: the
    first step at 0), kept for the tiny model's pre-training only (its weights stay tiny-v3's).
    """
    warmup = math.ceil(cfg.warmup_ratio * num_steps)
    total = max(num_steps, 1)
    if warmup_from_zero:
        from transformers import get_scheduler

        name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
        return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    factor = functools.partial(_lr_factor, schedule=cfg.schedule, warmup=warmup, total=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _lr_factor(s: int, *, schedule: str, warmup: int, total: int) -> float:
    """The share of lr that step ``s`` (0-based) runs at; after warm-up, transformers' decays."""
    if s < warmup:
        return (s + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (s - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


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


@dataclass(frozen=True)
class StepReport:
    """One optimizer step, as the loop tells its hook."""

    step: int  # 1-based within the stage
    n_steps: int
    loss: float  # the step's loss: summed over its target tokens, divided by their number
    lr: float  # the learning rate the step used
    tokens: int  # real (unpadded) tokens the step trained on
    supervised_tokens: int  # target tokens (the loss is over these)
    seconds: float  # the step's wall time
    examples: str = ""  # batching.examples_hash of the step's example ids ("" for a recipe-1 plan)


StepHook = Callable[[StepReport], None]


def train_batches(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    examples: Sequence[TrainExample],
    plan: StagePlan,
    cfg: TrainSpec,
    *,
    pad_id: int,
    autocast_dtype: torch.dtype | None = None,
    on_step: StepHook | None = None,
    warmup_from_zero: bool = False,
) -> StageResult:
    """Train the adapter on one stage's batches, following ``plan``; the LR schedule restarts here.

    The loop alone: :func:`trajhpc.job.recipe.train_stage` is a job's stage around it (its token
    counts and checkpoint metadata)."""
    started = time.perf_counter()
    n_steps = len(plan.steps)
    if n_steps == 0:
        return StageResult(None, 0.0, 0, 0, None)
    device = next(p for p in model.parameters()).device
    params = trainable_parameters(model)
    scheduler = build_scheduler(optimizer, cfg, n_steps, warmup_from_zero=warmup_from_zero)
    amp = autocast(device.type, autocast_dtype)
    # fp16 needs loss scaling (bf16 and fp32 don't); a fresh scaler per stage keeps
    # stage boundaries free of extra state.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    model.train()
    loss_sum, target_sum, token_sum, first = 0.0, 0, 0, 0
    for step, n_micro in enumerate(plan.steps):
        step_started = time.perf_counter()
        micro = plan.batches[first : first + n_micro]
        first += n_micro
        n_target = sum(target_tokens(examples[i]) for b in micro for i in b)
        step_loss, step_tokens = 0.0, 0
        for batch_idx in micro:
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in batch_idx], pad_id).items()}
            with amp:
                # Summed over target tokens, divided by the step's target count.
                loss = supervised_loss(model, batch, max(n_target, 1))
            scaler.scale(loss).backward()
            step_loss += loss.item()
            step_tokens += int(batch["attention_mask"].sum())
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]  # what this step uses; the scheduler moves it after
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += step_loss * n_target
        target_sum += n_target
        token_sum += step_tokens
        if on_step is not None:
            seconds = time.perf_counter() - step_started
            digest = plan.examples[step] if plan.examples else ""
            on_step(StepReport(step + 1, n_steps, step_loss, float(lr), step_tokens, n_target, seconds, digest))
    loss = loss_sum / target_sum if target_sum else None
    return StageResult(loss, time.perf_counter() - started, n_steps, token_sum, scheduler.state_dict())


