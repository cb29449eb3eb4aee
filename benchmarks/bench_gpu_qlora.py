"""QLoRA speed at Llama-3.1-8B scale on one GPU: synthetic MFU, the job vs the standard recipe, one real job.

No model hub on the GPU machines, so the Llama-3.1-8B architecture is built with
random weights from its config (same FLOPs and memory as the real weights), saved
once as a bf16 folder with the small API-Bank tokenizer of the ``tiny`` model copied
in (its ids < 2048 are valid for the 128k vocabulary), and loaded through the job's
own path (``trajhpc.job.train.load_base_model``: NF4 + double quantization, bf16
compute), with a LoRA adapter r16 on all linear projections.

Modes (one per run):

- ``synthetic`` (default): ``train_batches`` on fixed-length random sequences
  (``--batch-size`` x ``--seq-len``, loss on the last ``--target-len`` tokens); tokens/s,
  peak memory, MFU.
- ``--peer``: the standard Hugging Face recipe (transformers ``Trainer`` + peft +
  bitsandbytes, ``prepare_model_for_kbit_training``, length-grouped sampling,
  gradient checkpointing, the grid's batch 8 x accumulation 2) and then the job's own
  loop (``tokens_per_batch``, checkpointing ``auto``) on the same real lv3 examples
  (condition B, one block) in the same process; prints both and their ratio.
- ``--job``: one real job through ``trajhpc.job.run.run_job`` at the grid's settings
  (capped data: ``--train-per-block``, ``--heldout-per-block``); prints stage
  times, train tokens/s, eval prompts/s and peak memory, and writes a rates file
  (``--rates-out``) for ``trajhpc submit MANIFEST --dry-run --rates FILE``.

MFU counts, per trained token, 4 x (frozen base matmul parameters: forward +
input-gradient backward, no weight gradient) + 6 x (adapter parameters), over the
GPU's dense bf16 peak (989 TFLOP/s for H100/H200 SXM, the default). The input
embedding (a lookup) is left out; attention scores and recomputation are not counted.

``--quick`` runs every mode on the tiny model on CPU in seconds (the test suite does,
so the benchmark cannot rot). On a GPU it needs bitsandbytes.

    python benchmarks/bench_gpu_qlora.py [--peer | --job] [--quick] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json), hard-coded: no hub access.
LLAMA_31_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
# The grid's settings (manifests/grid.yaml) that the --peer and --job modes use.
GRID_TRAIN = dict(epochs=2, lr=2e-4, schedule="cosine", warmup_ratio=0.03, batch_size=8, grad_accum=2, max_seq_len=2048)
# grid.yaml: 16 examples per step as micro-batches of at most 6144 padded tokens.
GRID_FAST = dict(tokens_per_batch=6144, examples_per_step=16, grad_accum=1, gradient_checkpointing="auto")
GRID_EVAL = dict(batch_size=32, max_new_tokens=160)
GRID_EVAL_FAST = dict(tokens_per_batch=65536, backend="merged")


@dataclass(frozen=True)
class Synthetic:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def base_matmul_params(cfg: dict) -> int:
    """Parameters that take part in a matmul per token: attention, MLP, LM head (not the embedding)."""
    h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i  # q, o; k, v; gate, up, down
    return layers * per_layer + h * cfg["vocab_size"]


def build_random_model(folder: Path) -> None:
    """Random-init Llama-3.1-8B in bf16 on the GPU, saved as a model folder (~16 GB)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA_31_8B), dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="5GB")
    del model
    torch.cuda.empty_cache()


def model_folder(args) -> Path:
    """The tiny model (``--quick``) or the random 8B folder with the tiny tokenizer copied in."""
    from trajhpc.job.models import resolve_model

    tiny = resolve_model("tiny")
    if args.quick:
        return tiny
    if not (args.folder / "config.json").exists():
        print(f"building random Llama-3.1-8B in {args.folder} ...", flush=True)
        started = time.perf_counter()
        build_random_model(args.folder)
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    for name in TOKENIZER_FILES:
        if (tiny / name).exists():
            shutil.copyfile(tiny / name, args.folder / name)
    return args.folder


def device_and_dtype():
    import torch

    cuda = torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float:
    from trajhpc.core.provenance import peak_memory_bytes

    return peak_memory_bytes(device_and_dtype()[0].type) / 2**30


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def real_examples(folder: Path, n: int | None):
    """Condition-B examples of the first bundled lv3 block, tokenized as the job does."""
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.spec import DataSpec

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    data = load_study_data(DataSpec())
    block = data.blocks[0]
    examples = tokenize_examples(tokenizer, data.train[block][:n], "B", max_seq_len=GRID_TRAIN["max_seq_len"])
    lengths = [len(e.input_ids) for e in examples]
    print(f"real data: block {block}, {len(examples)} B examples, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"max {max(lengths)}", flush=True)
    return tokenizer, examples


# ---------------------------------------------------------------- synthetic


def synthetic(args, folder: Path) -> None:
    import torch

    from trajhpc.job import batching, train
    from trajhpc.spec import LoraSpec, TrainSpec

    device, dtype = device_and_dtype()
    reset_peak()
    ckpt = not args.no_gradient_checkpointing
    base = train.load_base_model(folder, quantization="nf4", compute_dtype=dtype, device=device,
                                 gradient_checkpointing=ckpt)
    model = train.attach_lora(base, LoraSpec(r=args.r, alpha=2 * args.r, dropout=0.05))
    config = base.config.to_dict()
    adapter_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_per_token = 4 * base_matmul_params(config) + 6 * adapter_params
    cfg = TrainSpec(batch_size=args.batch_size, lr=1e-4, max_seq_len=args.seq_len, schedule="constant",
                    warmup_ratio=0.0)
    gen = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.steps + 2)
    prompt_len = args.seq_len - args.target_len
    examples = []
    for _ in range(n):
        ids = torch.randint(0, config["vocab_size"], (args.seq_len,), generator=gen).tolist()
        examples.append(Synthetic(tuple(ids), (-100,) * prompt_len + tuple(ids[prompt_len:])))
    lengths = [args.seq_len] * n
    optimizer = train.build_optimizer(model, cfg)
    autocast = train.autocast_dtype_for(device, dtype)

    def run(steps: int, stage: int):
        plan = batching.stage_batches(lengths, batch_size=args.batch_size, grad_accum=1, seed=0, stage=stage, max_steps=steps)
        return train.train_batches(model, optimizer, examples, plan, cfg, pad_id=0, autocast_dtype=autocast)

    run(2, 1)  # warm-up: kernels, allocator, cuBLAS handles
    sync()
    result = run(args.steps, 2)
    sync()
    tok_s = result.tokens / result.seconds
    mfu = tok_s * flops_per_token / (args.peak_tflops * 1e12)
    print(f"synthetic: batch {args.batch_size} x {args.seq_len} tokens, loss on the last {args.target_len}, "
          f"LoRA r={args.r} ({adapter_params / 1e6:.1f}M trainable), gradient checkpointing {'on' if ckpt else 'off'}")
    print(f"synthetic: {tok_s:,.0f} tokens/s over {args.steps} steps ({result.seconds:.1f} s), loss {result.loss:.3f}, "
          f"peak {peak_gib():.1f} GiB")
    print(f"synthetic: MFU {mfu:.1%} ({flops_per_token / 1e9:.1f} GFLOP/token; peak {args.peak_tflops:.0f} TFLOP/s)")


# ---------------------------------------------------------------- the standard recipe vs the job's loop


def peer_recipe(folder: Path, tokenizer, examples, steps: int, warmup: int) -> float:
    """transformers Trainer + peft + bitsandbytes, as the QLoRA tutorials write it; real tokens/s."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    device, dtype = device_and_dtype()
    cuda = device.type == "cuda"
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=bnb, dtype=dtype,
                                                 device_map={"": 0} if cuda else {"": "cpu"})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    rows = [{"input_ids": list(e.input_ids), "attention_mask": [1] * len(e.input_ids), "labels": list(e.labels)}
            for e in examples]

    class CountingTrainer(Trainer):
        """Counts the real (unpadded) tokens of every micro-batch, without a host sync."""

        tokens: list = []

        def training_step(self, model, inputs, *rest, **kw):
            self.tokens.append(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *rest, **kw)

    class Timer(TrainerCallback):
        started = ended = None
        micro_at_start = 0

        def on_step_end(self, a, state, control, **kw):
            sync()
            if state.global_step == warmup:
                self.started, self.micro_at_start = time.perf_counter(), len(trainer.tokens)
            self.ended = time.perf_counter()

    targs = TrainingArguments(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "trajhpc-peer"), max_steps=warmup + steps,
        per_device_train_batch_size=GRID_TRAIN["batch_size"], gradient_accumulation_steps=GRID_TRAIN["grad_accum"],
        learning_rate=GRID_TRAIN["lr"], lr_scheduler_type="cosine", warmup_steps=GRID_TRAIN["warmup_ratio"],
        bf16=cuda, optim="adamw_torch", gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False}, train_sampling_strategy="group_by_length",
        logging_steps=10_000, save_strategy="no", report_to=[], dataloader_num_workers=0, use_cpu=not cuda,
        disable_tqdm=True, seed=0,
    )
    timer = Timer()
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = CountingTrainer(model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[timer])
    trainer.tokens = []
    trainer.train()
    tokens = int(sum(t.item() for t in trainer.tokens[timer.micro_at_start:]))
    seconds = timer.ended - timer.started
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    print(f"peer (Trainer + peft + bitsandbytes, batch {GRID_TRAIN['batch_size']} x accum {GRID_TRAIN['grad_accum']}, "
          f"checkpointing on): {tokens / seconds:,.0f} tok/s ({tokens} tokens in {seconds:.1f} s), "
          f"peak {peak_gib():.1f} GiB", flush=True)
    return tokens / seconds


def job_loop(folder: Path, tokenizer, examples, tokens_per_batch: int) -> float:
    """The job's own recipe on the same examples: token batches, checkpointing auto, logits on targets only."""
    import torch

    from trajhpc.job import batching, train
    from trajhpc.spec import LoraSpec, TrainSpec

    device, dtype = device_and_dtype()
    reset_peak()
    cfg = TrainSpec(**{**GRID_TRAIN, "epochs": 1, **GRID_FAST, "tokens_per_batch": tokens_per_batch})
    lengths = [len(e.input_ids) for e in examples]
    # The job's plan (steps of examples from their ids); synthetic examples have none, so number them.
    ids = [getattr(getattr(e, "record", None), "uid", None) or f"example-{i}" for i, e in enumerate(examples)]
    from transformers import AutoConfig

    ckpt = train.resolve_gradient_checkpointing(
        cfg.gradient_checkpointing, config=AutoConfig.from_pretrained(str(folder)),
        batch_tokens=train.largest_batch_tokens(lengths, cfg.batch_size, cfg.tokens_per_batch, cfg.examples_per_step),
        compute_dtype=dtype, quantization="nf4", free_bytes=train.free_memory_bytes(device),
    )
    base = train.load_base_model(folder, quantization="nf4", compute_dtype=dtype, device=device,
                                 gradient_checkpointing=ckpt)
    model = train.attach_lora(base, LoraSpec(r=16, alpha=32, dropout=0.05))
    optimizer = train.build_optimizer(model, cfg)
    autocast = train.autocast_dtype_for(device, dtype)
    warm = batching.spec_stage_batches(cfg.model_copy(update={"max_steps": 1}), ids, lengths, seed=0, stage=1)
    train.train_batches(model, optimizer, examples, warm, cfg, pad_id=tokenizer.pad_token_id, autocast_dtype=autocast)
    sync()
    plan = batching.spec_stage_batches(cfg, ids, lengths, seed=0, stage=2)
    result = train.train_batches(model, optimizer, examples, plan, cfg, pad_id=tokenizer.pad_token_id,
                               autocast_dtype=autocast)
    sync()
    real = sum(lengths[i] for i in plan.consumed())
    padding = 1 - real / batching.padded_tokens(plan, lengths)
    print(f"job loop (tokens_per_batch {tokens_per_batch}, accum {cfg.grad_accum}, checkpointing "
          f"{'on' if ckpt else 'off'} by auto): {result.tokens / result.seconds:,.0f} tok/s ({result.tokens} tokens "
          f"in {result.seconds:.1f} s, {len(plan.batches)} batches), padding {padding:.1%}, peak {peak_gib():.1f} GiB",
          flush=True)
    del model, base, optimizer
    return result.tokens / result.seconds


def peer(args, folder: Path) -> None:
    tokenizer, examples = real_examples(folder, 16 if args.quick else None)
    peer_rate = peer_recipe(folder, tokenizer, examples, steps=1 if args.quick else args.peer_steps, warmup=1)
    ours = job_loop(folder, tokenizer, examples, 2048 if args.quick else args.tokens_per_batch)
    print(f"ratio: the job's loop is {ours / peer_rate:.2f}x the standard recipe on the same examples (target >= 2x)")


# ---------------------------------------------------------------- one real job


def job(args, folder: Path) -> None:
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.run import run_job
    from trajhpc.spec import DataSpec, JobSpec

    data = {"max_train_per_block": args.train_per_block, "max_heldout_per_block": args.heldout_per_block}
    train_cfg = {**GRID_TRAIN, **GRID_FAST}
    eval_cfg = {**GRID_EVAL, **GRID_EVAL_FAST}
    if args.quick:
        train_cfg.update(epochs=1, max_steps=1, tokens_per_batch=2048)
        eval_cfg.update(max_new_tokens=8)
    spec = JobSpec.model_validate({
        "condition": "B", "seed": 0, "order": list(load_study_data(DataSpec()).blocks), "model": str(folder),
        "data": data, "lora": {"r": 16, "alpha": 32, "dropout": 0.05}, "train": train_cfg, "eval": eval_cfg,
    })
    job_dir = Path(args.job_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "trajhpc-bench-job") / spec.job_id
    shutil.rmtree(job_dir, ignore_errors=True)
    reset_peak()
    started = time.perf_counter()
    metrics = run_job(spec, job_dir, study="bench")
    wall = time.perf_counter() - started
    stages, res = metrics["stages"], metrics["resources"]
    train_s = sum(s["train_seconds"] or 0.0 for s in stages)
    eval_s = sum(s["eval_seconds"] for s in stages)
    prompts = sum(b["n"] for s in stages for b in s["per_block"].values())
    tokens = json.loads((job_dir / "tokens.json").read_text())
    total = sum(t["total_tokens"] for t in tokens["stages"])
    for s in stages:
        print(f"job stage {s['stage']}: train {s['train_seconds'] or 0:.1f} s, eval {s['eval_seconds']:.1f} s "
              f"({sum(b['n'] for b in s['per_block'].values())} prompts)")
    setup = max(wall - train_s - eval_s, 0.0)
    print(f"job: {wall:.0f} s wall ({setup:.0f} s set-up), train {total / train_s:,.0f} tok/s ({total} tokens), "
          f"eval {prompts / eval_s:.1f} prompts/s ({prompts} prompts, {spec.eval.max_new_tokens} new tokens max), "
          f"peak {res['peak_memory_bytes'] / 2**30:.1f} GiB, gradient checkpointing "
          f"{res.get('gradient_checkpointing')}")
    if args.rates_out:
        rates = {
            "schema": "trajhpc.rates/1", "device": metrics["provenance"].get("gpu") or metrics["device"],
            "model": "Llama-3.1-8B architecture, random weights" if not args.quick else "tiny",
            "train_tokens_per_s": total / train_s, "eval_prompts_per_s": prompts / eval_s, "setup_s": setup,
            "settings": {"train": train_cfg, "eval": eval_cfg},
        }
        Path(args.rates_out).write_text(json.dumps(rates, indent=2) + "\n")
        print(f"rates written to {args.rates_out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--peer", action="store_true", help="standard Trainer recipe vs the job's loop, real examples")
    mode.add_argument("--job", action="store_true", help="time one real job and write a rates file")
    parser.add_argument("--quick", action="store_true", help="tiny model, tiny sizes, CPU is fine (for the tests)")
    parser.add_argument("--folder", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "llama31-8b-random")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--target-len", type=int, default=32, help="supervised tokens at the end of each sequence")
    parser.add_argument("--steps", type=int, default=10, help="synthetic: timed optimizer steps (after 2 warm-up)")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--peer-steps", type=int, default=6, help="peer: timed optimizer steps (after 1 warm-up)")
    parser.add_argument("--tokens-per-batch", type=int, default=GRID_FAST["tokens_per_batch"])
    parser.add_argument("--train-per-block", type=int, default=48)
    parser.add_argument("--heldout-per-block", type=int, default=16)
    parser.add_argument("--job-dir", type=Path, default=None)
    parser.add_argument("--rates-out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.seq_len, args.target_len, args.steps, args.r = 2, 64, 8, 1, 4
        args.train_per_block, args.heldout_per_block = 4, 2

    import torch

    if not torch.cuda.is_available() and not args.quick:
        print("bench_gpu_qlora: no CUDA device here; run it on a GPU node, or use --quick (skipped).")
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        sys.exit("bench_gpu_qlora: bitsandbytes is not installed (pip install the manylinux wheel)")
    folder = model_folder(args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device {device}; torch {torch.__version__}; model {folder}", flush=True)
    if args.peer:
        peer(args, folder)
    elif args.job:
        job(args, folder)
    else:
        synthetic(args, folder)


if __name__ == "__main__":
    main()
