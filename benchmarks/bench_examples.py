"""Time building every example of every condition over the bundled API-Bank data.

Loads lv3-api-train, level-1-api and level-2-api, renders each record under every
condition with the tiny model's chat template, tokenizes it and counts its tokens,
exactly as training and evaluation do. Prints seconds and token totals; target:
under 2 s in all on 2 CPU cores.

    .venv/bin/python benchmarks/bench_examples.py
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

FILES = ("training-data/lv3-api-train.json", "test-data/level-1-api.json", "test-data/level-2-api.json")
CONDITIONS = (("A", None), ("B", None), ("calls-only", None), ("last-k", 1))
MAX_SEQ_LEN = 4096


def main() -> None:
    from transformers import AutoTokenizer

    from trajhpc.data.apibank import bundled_root, load_records
    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.tokens import count_tokens
    from trajhpc.job.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny"))

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    root = bundled_root()
    records = [r for name in FILES for r in load_records(root / name, root=root)]
    load_s = time.perf_counter() - t0
    print(f"load records        {len(records):5d} records           {load_s:6.3f} s")

    total_s = load_s
    for condition, k in CONDITIONS:
        t = time.perf_counter()
        counts = count_tokens(tokenize_examples(tokenizer, records, condition, k=k, max_seq_len=MAX_SEQ_LEN))
        seconds = time.perf_counter() - t
        total_s += seconds
        label = condition if k is None else f"{condition} (k={k})"
        print(
            f"{label:<19} {counts.examples:5d} examples {counts.prompt_tokens:8d} prompt "
            f"{counts.supervised_tokens:6d} supervised tokens {seconds:6.3f} s "
            f"({counts.total_tokens / seconds / 1e6:.2f} M tok/s)"
        )
    cpu_s = time.process_time() - cpu0
    print(f"total               {len(records) * len(CONDITIONS):5d} examples {total_s:6.3f} s wall, {cpu_s:6.3f} s CPU (all threads)")
    print(f"load average while running: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
