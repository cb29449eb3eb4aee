"""Evaluation throughput: batched greedy generation vs one example at a time, or the
peft path vs the merged backend (``--merged``).

Same held-out prompts (every block's held-out set of the bundled lv3 data), same
model and settings as the job (QLoRA adapter on the tiny model by default), only
the batch size differs. Prints examples/s for both (best of ``--repeats``) and the speedup (target >= 8x
on CPU), and checks the two give the same predictions.

``--merged``: today's path (generation through the peft model, ``--batch-size``
rows) against the merged backend (:mod:`trajhpc.job.merged`, at ``--batch-size`` rows
and at ``--tokens-per-batch``), on an adapter whose B weights are non-zero. Prints
new tokens/s, the speedup and the agreement with every disagreeing example, and the time of
``eval.gold_likelihood``'s teacher-forced pass over the same items. On
CUDA it runs as the job does (bf16 compute + autocast); ``--model llama31-8b-random``
builds the Llama-3.1-8B architecture with random weights (no hub there; see
bench_gpu_qlora.py), which then generates random tokens and rarely stops early.
``--quick``: a few seconds on the tiny model on CPU.

    .venv/bin/python benchmarks/bench_eval.py [--n 64] [--batch-size 16] [--max-new-tokens 32]
    .venv/bin/python benchmarks/bench_eval.py --merged [--quick] [--n 208 --batch-size 32 --max-new-tokens 160]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--quantization", default="nf4")
    parser.add_argument("--condition", default="B")
    parser.add_argument("--n", type=int, default=64, help="held-out examples")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="best of N, alternating (shared CPUs are noisy)")
    parser.add_argument("--merged", action="store_true", help="peft path vs merged backend")
    parser.add_argument("--tokens-per-batch", type=int, default=None, help="merged backend, batches by tokens")
    parser.add_argument("--quick", action="store_true", help="--merged on 8 prompts, 8 new tokens, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.merged, args.n, args.max_new_tokens, args.repeats = True, 8, 8, 1
    if args.merged:
        return bench_merged(args)

    import torch
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job import train
    from trajhpc.job.evaluate import end_of_turn_ids, generate_greedy
    from trajhpc.job.models import resolve_model
    from trajhpc.spec import DataSpec, LoraSpec

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    data = load_study_data(DataSpec())
    records = [r for b in data.blocks for r in data.heldout[b]][: args.n]
    examples = tokenize_examples(tokenizer, records, args.condition, max_seq_len=1024)
    prompts = [e.prompt_ids for e in examples]
    torch.manual_seed(0)
    base = train.load_base_model(
        path, quantization=args.quantization, compute_dtype=torch.float32,
        device=torch.device("cpu"), gradient_checkpointing=False,
    )
    model = train.attach_lora(base, LoraSpec())
    kwargs = dict(pad_id=tokenizer.pad_token_id, eos_ids=end_of_turn_ids(tokenizer, model), max_new_tokens=args.max_new_tokens)
    generate_greedy(model, prompts[:2], batch_size=2, **kwargs)  # warm-up

    results: dict[int, tuple[list, float]] = {}
    for _ in range(args.repeats):
        for batch_size in (args.batch_size, 1):
            start = time.perf_counter()
            out = generate_greedy(model, prompts, batch_size=batch_size, **kwargs)
            seconds = time.perf_counter() - start
            if batch_size not in results or seconds < results[batch_size][1]:
                results[batch_size] = (out, seconds)
    for batch_size, (out, seconds) in results.items():
        new = sum(len(o) for o in out)
        print(
            f"batch {batch_size:>3}: {len(prompts) / seconds:7.2f} examples/s  {seconds:6.2f} s  "
            f"({new} new tokens, mean prompt {sum(map(len, prompts)) / len(prompts):.0f} tokens)"
        )
    (batched, t_batched), (single, t_single) = results[args.batch_size], results[1]
    same = sum(a == b for a, b in zip(batched, single))
    print(f"speedup {t_single / t_batched:.1f}x (target >= 8x); identical predictions {same}/{len(prompts)}")
    print(f"model {args.model} ({args.quantization}), torch threads {torch.get_num_threads()}")


def bench_merged(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job import train
    from trajhpc.job.evaluate import end_of_turn_ids, generate_greedy, gold_token_count, teacher_forced
    from trajhpc.job.merged import MergedEvalModel
    from trajhpc.job.models import resolve_model
    from trajhpc.spec import DataSpec, LoraSpec

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = train.resolve_compute_dtype("auto", device)
    autocast = train.autocast_dtype_for(device, dtype)  # as the job does
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model("tiny")))
    path = random_8b() if args.model == "llama31-8b-random" else resolve_model(args.model)
    data = load_study_data(DataSpec())
    records = [r for b in data.blocks for r in data.heldout[b]][: args.n]
    examples = tokenize_examples(tokenizer, records, args.condition, max_seq_len=1024)
    prompts = [e.prompt_ids for e in examples]
    special = set(tokenizer.all_special_ids)
    golds = [e.input_ids[len(e.prompt_ids):] for e in examples]
    golds = [g[: gold_token_count(g, special)] for g in golds]
    torch.manual_seed(0)
    base = train.load_base_model(
        path, quantization=args.quantization, compute_dtype=dtype, device=device, gradient_checkpointing=False
    )
    model = train.attach_lora(base, LoraSpec())
    with torch.no_grad():  # a fresh adapter has B = 0, which would merge nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    started = time.perf_counter()
    merged = MergedEvalModel.from_peft(model)
    built = time.perf_counter() - started
    started = time.perf_counter()
    merged.sync(model)
    synced = time.perf_counter() - started
    kwargs = dict(
        pad_id=tokenizer.pad_token_id, eos_ids=end_of_turn_ids(tokenizer, model),
        max_new_tokens=args.max_new_tokens, autocast_dtype=autocast,
    )
    runs = {
        f"peft   batch {args.batch_size}": (model, None),
        f"merged batch {args.batch_size}": (merged.model, None),
    }
    if args.tokens_per_batch:
        runs[f"merged {args.tokens_per_batch} tokens/batch"] = (merged.model, args.tokens_per_batch)
    generate_greedy(model, prompts[:2], batch_size=2, **{**kwargs, "max_new_tokens": 2})  # warm-up
    generate_greedy(merged.model, prompts[:2], batch_size=2, **{**kwargs, "max_new_tokens": 2})
    results: dict[str, tuple[list, float]] = {}
    for _ in range(args.repeats):
        for label, (m, tokens) in runs.items():
            sync_device(device)
            start = time.perf_counter()
            out = generate_greedy(m, prompts, batch_size=args.batch_size, tokens_per_batch=tokens, **kwargs)
            sync_device(device)
            seconds = time.perf_counter() - start
            if label not in results or seconds < results[label][1]:
                results[label] = (out, seconds)
    # eval.gold_likelihood's extra pass (teacher forcing of the gold calls), on the merged copy as a job runs it.
    forced_s = None
    for _ in range(args.repeats):
        sync_device(device)
        start = time.perf_counter()
        teacher_forced(merged.model, prompts, golds, pad_id=tokenizer.pad_token_id, batch_size=args.batch_size,
                       tokens_per_batch=args.tokens_per_batch, autocast_dtype=autocast)
        sync_device(device)
        forced_s = min(forced_s or float("inf"), time.perf_counter() - start)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"model {args.model} ({args.quantization}, {dtype}), {name}, {len(prompts)} prompts "
          f"(mean {sum(map(len, prompts)) / len(prompts):.0f} tokens), max_new_tokens {args.max_new_tokens}")
    print(f"merged copy: built in {built:.2f} s, sync (per stage) {synced:.2f} s")
    for label, (out, seconds) in results.items():
        new = sum(len(o) for o in out)
        print(f"{label:<28} {new / seconds:9.1f} new tokens/s  {seconds:7.2f} s  ({new} new tokens)")
    merged_s = results[f"merged batch {args.batch_size}"][1]
    print(f"teacher-forced gold scoring (eval.gold_likelihood), merged: {forced_s:.2f} s, "
          f"{100 * forced_s / merged_s:.0f}% of merged generation's time, "
          f"{sum(map(len, golds)) / forced_s:.1f} gold tokens/s")
    slow_label, fast_label = next(iter(results)), list(results)[-1]
    (slow, t_slow), (fast, t_fast) = results[slow_label], results[fast_label]
    rate = lambda out, t: sum(map(len, out)) / t  # noqa: E731
    print(f"speedup {rate(fast, t_fast) / rate(slow, t_slow):.1f}x new tokens/s ({fast_label} vs {slow_label})")
    for label, (out, _) in list(results.items())[1:]:
        bad = [i for i, (a, b) in enumerate(zip(slow, out)) if a != b]
        print(f"agreement {label}: {len(prompts) - len(bad)}/{len(prompts)} identical predictions")
        for i in bad:
            print(f"  #{i}: peft   {tokenizer.decode(slow[i])!r}\n  #{i}: merged {tokenizer.decode(out[i])!r}")


def sync_device(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def random_8b():
    """The random-weight Llama-3.1-8B folder of bench_gpu_qlora.py, built on first use."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_gpu_qlora import build_random_model

    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "llama31-8b-random"
    if not (folder / "config.json").exists():
        print(f"building random Llama-3.1-8B in {folder} ...", flush=True)
        build_random_model(folder)
    return folder


if __name__ == "__main__":
    main()
