"""Training throughput and padding share of the job's training loop on a bundled block.

Runs the real recipe (trajhpc.job.train: length-grouped plan, QLoRA or LoRA model,
train_batches) on one lv3 block and prints tokens/s (real tokens, padding excluded),
the padding share of computed tokens (target < 5%), seconds and peak RSS.

    .venv/bin/python benchmarks/bench_train.py                      # tiny model, nf4 and none
    .venv/bin/python benchmarks/bench_train.py --model smollm2-135m-instruct --steps 3 --batch-size 2
    .venv/bin/python benchmarks/bench_train.py --tokens-per-batch 8192            # batches by padded tokens
"""

from __future__ import annotations

import argparse
import os
import resource

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--block", default="care-appointments")
    parser.add_argument("--condition", default="B")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens-per-batch", type=int, default=None, help="batches by padded tokens instead")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--quantization", nargs="+", default=["nf4", "none"])
    parser.add_argument("--quick", action="store_true", help="2 steps, no quantization (the test suite's check)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.quantization = 2, ["none"]

    import torch
    from transformers import AutoTokenizer

    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.splits import load_study_data
    from trajhpc.job import batching, train
    from trajhpc.job.models import resolve_model
    from trajhpc.spec import DataSpec, LoraSpec, TrainSpec

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    records = load_study_data(DataSpec()).train[args.block]
    examples = tokenize_examples(tokenizer, records, args.condition, max_seq_len=args.max_seq_len)
    lengths = [len(e.input_ids) for e in examples]
    cfg = TrainSpec(
        batch_size=args.batch_size, max_steps=args.steps, max_seq_len=args.max_seq_len,
        tokens_per_batch=args.tokens_per_batch,
    )
    plan = batching.stage_batches(
        lengths, batch_size=cfg.batch_size, grad_accum=1, seed=0, stage=1, max_steps=args.steps,
        tokens_per_batch=cfg.tokens_per_batch,
    )
    real = sum(lengths[i] for i in plan.consumed())
    padded = batching.padded_tokens(plan, lengths)
    print(
        f"model {args.model}, block {args.block} ({len(examples)} examples, condition {args.condition}), "
        f"batch {cfg.tokens_per_batch or cfg.batch_size} {'tokens' if cfg.tokens_per_batch else 'examples'}, "
        f"{len(plan.steps)} steps, torch threads {torch.get_num_threads()}"
    )
    print(f"padding: {padded - real} of {padded} computed tokens = {(padded - real) / padded:.2%} (target < 5%)")
    for quantization in args.quantization:
        torch.manual_seed(0)
        base = train.load_base_model(
            path, quantization=quantization, compute_dtype=torch.float32,
            device=torch.device("cpu"), gradient_checkpointing=False,
        )
        model = train.attach_lora(base, LoraSpec())
        result = train.train_batches(
            model, train.build_optimizer(model, cfg), examples, plan, cfg, pad_id=tokenizer.pad_token_id
        )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(
            f"{quantization:>5}: {result.tokens / result.seconds:9,.0f} tok/s  {result.seconds:6.2f} s  "
            f"loss {result.loss:.3f}  peak RSS {rss:.2f} GiB"
        )


if __name__ == "__main__":
    main()
