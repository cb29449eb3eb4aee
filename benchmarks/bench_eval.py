"""Evaluation throughput: batched greedy generation vs one example at a time.

Same held-out prompts (every block's held-out set of the bundled lv3 data), same
model and settings as the job (QLoRA adapter on the tiny model by default), only
the batch size differs. Prints examples/s for both (best of ``--repeats``) and the speedup (target >= 8x
on CPU), and checks the two give the same predictions.

    .venv/bin/python benchmarks/bench_eval.py [--n 64] [--batch-size 16] [--max-new-tokens 32]
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
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from trajhpc import train
    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.study import load_study_data
    from trajhpc.evaluate import end_of_turn_ids, generate_greedy
    from trajhpc.models import resolve_model
    from trajhpc.spec import DataSpec, LoraSpec

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    data = load_study_data(DataSpec())
    records = [r for b in data.blocks for r in data.heldout[b]][: args.n]
    prompts = [e.prompt_ids for e in tokenize_examples(tokenizer, records, args.condition, max_seq_len=1024)]
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


if __name__ == "__main__":
    main()
