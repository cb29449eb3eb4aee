"""A fixed probe set for the tiny model: greedy answers to 100 held-out lv3 prompts, so a rebuild
can be compared with the shipped model by what it does, not by its bytes (float sums differ
across CPUs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trajhpc.data.apibank import Record

PROBE_FILE = "training-data/lv3-api-train.json"
PROBE_SIZE = 100
PROBE_NEW_TOKENS = 24  # the tool's name and the start of its arguments


def probe_items(n: int = PROBE_SIZE) -> list[tuple[Record, str, int | None]]:
    """The first ``n`` held-out lv3 records of the default split (uid order), each under the next
    of the tiny model's conditions in turn: (record, condition, k)."""
    from trajhpc.data.splits import load_study_data
    from trajhpc.job.tinycorpus import TINY_CONDITIONS
    from trajhpc.spec import DataSpec

    data = load_study_data(DataSpec(files=(PROBE_FILE,)))
    records = sorted((r for block in data.blocks for r in data.heldout[block]), key=lambda r: (r.source, r.index))[:n]
    return [(r, *TINY_CONDITIONS[i % len(TINY_CONDITIONS)]) for i, r in enumerate(records)]


def greedy_answers(model_dir: Path, items: Sequence[tuple[Record, str, int | None]], *, batch_size: int = 20) -> list[str]:
    """The model's greedy continuation of each item's prompt (fp32, CPU, one thread), decoded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trajhpc.data.conditions import render_texts

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        answers: list[str] = []
        for start in range(0, len(items), batch_size):
            prompts = [render_texts(tokenizer, r, c, k)[0] for r, c, k in items[start:start + batch_size]]
            batch = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(
                    **batch, max_new_tokens=PROBE_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            answers += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        torch.set_num_threads(threads)
    return answers


def agreement(first: Sequence[str], second: Sequence[str]) -> float:
    """Share of probes on which two models' greedy answers are equal."""
    if len(first) != len(second) or not first:
        raise ValueError(f"probe answers differ in number: {len(first)} vs {len(second)}")
    return sum(a == b for a, b in zip(first, second)) / len(first)
