"""Fast evaluation: batches by tokens, the merged-adapter copy, and its agreement with the peft path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from trajhpc.data.conditions import tokenize_examples
from trajhpc.data.splits import load_study_data
from trajhpc.job import batching, train
from trajhpc.job.evaluate import end_of_turn_ids, eval_batches, generate_greedy
from trajhpc.job.merged import MergedEvalModel
from trajhpc.spec import DataSpec, LoraSpec, TrainSpec

CPU = torch.device("cpu")
BLOCK = "care-appointments"
MAX_NEW = 16


@pytest.fixture(scope="module")
def train_examples(tiny):
    _, tokenizer = tiny
    data = load_study_data(DataSpec(max_train_per_block=16))
    return tokenize_examples(tokenizer, data.train[BLOCK], "B", max_seq_len=384)


@pytest.fixture(scope="module")
def heldout_prompts(tiny):
    """Real bundled held-out prompts of every block, as the job builds them."""
    _, tokenizer = tiny
    data = load_study_data(DataSpec(max_heldout_per_block=8))
    records = [r for b in data.blocks for r in data.heldout[b]]
    return [e.prompt_ids for e in tokenize_examples(tokenizer, records, "B", max_seq_len=1024)]


def lora_model(path, quantization, seed=0):
    torch.manual_seed(seed)
    base = train.load_base_model(
        path, quantization=quantization, compute_dtype=torch.float32, device=CPU, gradient_checkpointing=False
    )
    return train.attach_lora(base, LoraSpec(r=8, alpha=16, dropout=0.05))


def train_steps(model, tokenizer, examples, steps, stage=1):
    cfg = TrainSpec(lr=5e-3, batch_size=4, schedule="constant", warmup_ratio=0.0)
    plan = batching.stage_batches(
        [len(e.input_ids) for e in examples], batch_size=4, grad_accum=1, seed=0, stage=stage, max_steps=steps
    )
    train.train_batches(model, train.build_optimizer(model, cfg), examples, plan, cfg, pad_id=tokenizer.pad_token_id)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def generate(model, tokenizer, prompts, **kwargs):
    return generate_greedy(
        model, prompts, pad_id=tokenizer.pad_token_id, eos_ids=end_of_turn_ids(tokenizer, model),
        max_new_tokens=MAX_NEW, **{"batch_size": 32, **kwargs},
    )


# ---------------------------------------------------------------- batches by tokens (pure)


def test_eval_batches_by_rows_are_todays_batches():
    lengths = [5, 9, 9, 2, 7]
    assert eval_batches(lengths, batch_size=2, max_new_tokens=10) == [[1, 2], [4, 0], [3]]


def test_eval_batches_by_tokens_fill_up_to_the_budget():
    lengths = [100, 10, 40, 60, 10, 30, 500, 20]
    batches = eval_batches(lengths, batch_size=1, max_new_tokens=20, tokens_per_batch=260)
    order = [i for b in batches for i in b]
    assert sorted(order) == list(range(len(lengths)))
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # longest first
    for k, b in enumerate(batches):
        width = max(lengths[i] for i in b) + 20
        assert len(b) == 1 or len(b) * width <= 260  # a prompt over the budget still gets a batch
        if k + 1 < len(batches):  # full: the next prompt would not have fit
            assert (len(b) + 1) * width > 260
    # 520 alone (over the budget); 2 x 120; 4 x 60 (a fifth row would make 300)
    assert batches == [[6], [0, 3], [2, 5, 7, 1], [4]]


class EchoModel(torch.nn.Module):
    """Fake model recording the batches it is asked to extend (last token + 1, then EOS 3)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rows = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.rows.append(input_ids.shape[0])
        last = input_ids[:, -1:]
        return torch.cat([input_ids, last + 1, torch.full_like(last, 3)], dim=1)


def test_generate_greedy_batches_by_tokens():
    model = EchoModel()
    prompts = [[5] * 10, [6] * 30, [7] * 10, [8] * 10]
    out = generate_greedy(model, prompts, pad_id=0, eos_ids=[3], batch_size=1, max_new_tokens=2, tokens_per_batch=40)
    assert model.rows == [1, 3]  # 30 + 2 alone; then 3 x (10 + 2) = 36 <= 40
    assert out == [[6], [7], [8], [9]]


# ---------------------------------------------------------------- the merged copy


@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_merged_copy_agrees_with_the_peft_path(tiny, train_examples, heldout_prompts, quantization):
    """Stage 0 (B = 0): identical predictions. After training: >= 99% identical, and the
    training model is left bit-identical by evaluating through the copy."""
    path, tokenizer = tiny
    model = lora_model(path, quantization)
    merged = MergedEvalModel.from_peft(model)
    prompts = heldout_prompts
    assert len(prompts) == 32
    # Few prompts in small batches here: the 4-bit path is slow on CPU.
    assert generate(merged.model, tokenizer, prompts[:8], batch_size=4) == generate(
        model, tokenizer, prompts[:8], batch_size=4
    )

    train_steps(model, tokenizer, train_examples, steps=3)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    before = state(model)
    merged.sync(model)
    fast = generate(merged.model, tokenizer, prompts, tokens_per_batch=4096)
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())  # the copy only reads the model
    slow = generate(model, tokenizer, prompts)
    same = sum(a == b for a, b in zip(fast, slow))
    assert same >= 0.99 * len(prompts), f"{same}/{len(prompts)} identical"
    assert any(len(ids) > 0 for ids in fast)


def test_sync_picks_up_further_training_and_leaves_the_model_as_it_was(tiny, train_examples):
    path, tokenizer = tiny
    model = lora_model(path, "nf4")
    train_steps(model, tokenizer, train_examples, steps=2)
    before = state(model)
    merged = MergedEvalModel.from_peft(model)
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())
    assert all(not p.requires_grad for p in merged.model.parameters())
    ids = torch.tensor([train_examples[0].input_ids[:64]])

    def logits(m):
        m.eval()
        with torch.no_grad():
            return m(input_ids=ids).logits

    stale = logits(merged.model)
    torch.testing.assert_close(stale, logits(model), atol=1e-4, rtol=1e-4)
    train_steps(model, tokenizer, train_examples, steps=2, stage=2)
    assert not torch.allclose(stale, logits(model), atol=1e-3)  # the adapter moved
    before = state(model)
    merged.sync(model)
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())
    torch.testing.assert_close(logits(merged.model), logits(model), atol=1e-4, rtol=1e-4)


def test_job_evaluates_through_the_merged_copy(tmp_path):
    from trajhpc.job.run import run_job
    from trajhpc.spec import JobSpec

    spec = JobSpec.model_validate({
        "condition": "B", "order": ["cost-insurance-other"], "seed": 1,
        "data": {"max_train_per_block": 8, "max_heldout_per_block": 2},
        "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 384},
        "lora": {"r": 4, "alpha": 8},
        "eval": {"max_new_tokens": 4, "backend": "merged", "tokens_per_batch": 4096},
    })
    metrics = run_job(spec, tmp_path / "job")
    assert metrics["complete"] and [s["eval_backend"] for s in metrics["stages"]] == ["merged", "merged"]
    rows = (tmp_path / "job" / "predictions" / "stage-1.jsonl").read_text().splitlines()
    assert len(rows) == 8 and all("prediction" in json.loads(r) for r in rows)


def test_bench_eval_quick_runs_and_prints_the_agreement(repo_root):
    out = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "bench_eval.py"), "--quick"],
        capture_output=True, text=True, timeout=600, cwd=repo_root,
        env={**os.environ, "PYTHONPATH": str(repo_root)},  # this checkout's trajhpc, not an installed one
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "agreement merged" in out.stdout and "new tokens/s" in out.stdout
