"""The same examples, step for step, in every arm of a unit (recipe 2), micro-batches only inside a
step, budget arms on a prefix of the step sequence, and a first step that learns."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.conditions import tokenize_examples
from trajhpc.data.splits import load_study_data
from trajhpc.job import batching, train
from trajhpc.spec import CONDITIONS, DataSpec, JobSpec, LoraSpec, TrainSpec

CPU = torch.device("cpu")
IDS = [f"dlg{i:03d}/{i % 3}" for i in range(40)]
ARM_A = [int(x) for x in np.random.default_rng(1).integers(20, 120, size=40)]  # short prompts
ARM_B = [n + int(x) for n, x in zip(ARM_A, np.random.default_rng(2).integers(0, 900, size=40))]  # longer, unevenly


def plan(ids=IDS, lengths=ARM_A, **kw):
    args = dict(examples_per_step=16, batch_size=8, seed=0, stage=1) | kw
    return batching.plan_steps(ids, lengths, **args)


def step_ids(p: batching.StagePlan, ids=IDS) -> list[set[str]]:
    out, first = [], 0
    for n in p.steps:
        out.append({ids[i] for b in p.batches[first : first + n] for i in b})
        first += n
    return out


# ---------------------------------------------------------------- pure: steps from ids only


def test_steps_depend_on_ids_not_lengths_or_list_order():
    a = plan(lengths=ARM_A, tokens_per_batch=1024)
    b = plan(lengths=ARM_B, tokens_per_batch=1024)
    assert a.examples == b.examples and len(a.steps) == len(b.steps) == 3  # 40 examples, 16 a step
    assert step_ids(a) == step_ids(b)
    assert a.batches != b.batches  # the micro-batches are each arm's own
    assert sum(b.steps) > sum(a.steps)
    reordered = list(reversed(range(40)))
    c = plan([IDS[i] for i in reordered], [ARM_B[i] for i in reordered], tokens_per_batch=1024)
    assert c.examples == a.examples and step_ids(c, [IDS[i] for i in reordered]) == step_ids(a)
    assert plan(seed=1).examples != a.examples and plan(stage=2).examples != a.examples


def test_step_hash_is_the_sorted_ids_hash():
    p = plan()
    first = step_ids(p)[0]
    assert p.examples[0] == batching.examples_hash(sorted(first)) == batching.examples_hash(list(first)[::-1])
    assert len(p.examples[0]) == 12 and int(p.examples[0], 16) >= 0


def test_micro_batches_split_a_step_within_the_cap():
    p = plan(lengths=ARM_B, tokens_per_batch=1024)
    for b in p.batches:
        assert len(b) == 1 or len(b) * max(ARM_B[i] for i in b) <= 1024
    rows = plan(lengths=ARM_B, batch_size=4)
    assert rows.steps == (4, 4, 2) and all(len(b) <= 4 for b in rows.batches)
    assert step_ids(rows) == step_ids(p)


def test_token_capped_micro_batches_are_the_fewest_with_the_least_padding():
    rng = np.random.default_rng(5)
    for _ in range(50):
        lengths = [int(x) for x in rng.integers(50, 1500, size=16)]
        step = list(range(16))
        micro = batching.micro_batches(step, lengths, batch_size=8, tokens_per_batch=3000)
        ranked = sorted(step, key=lambda i: lengths[i])
        greedy = batching._fill(ranked, lengths, 3000)  # the fewest runs, not the least padding
        assert sorted(i for b in micro for i in b) == step and len(micro) == len(greedy)
        assert all(len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 3000 for b in micro)
        pad = sum(len(b) * max(lengths[i] for i in b) for b in micro)
        assert pad <= sum(len(b) * max(lengths[i] for i in b) for b in greedy)
        assert [max(lengths[i] for i in b) for b in micro] == sorted((max(lengths[i] for i in b) for b in micro),
                                                                    reverse=True)  # the longest first


def test_epochs_and_max_steps_count_steps_of_examples():
    one = plan()
    assert Counter(i for s in step_ids(one) for i in s) == Counter(IDS) and one.passes == 1
    two = plan(epochs=2)
    assert len(two.steps) == 6 and two.passes == 2 and two.examples[:3] == one.examples
    assert Counter(two.consumed()) == Counter({i: 2 for i in range(40)})
    half = plan(epochs=0.5)
    assert half.examples == one.examples[:2]
    five = plan(max_steps=5, lengths=ARM_B, tokens_per_batch=512)
    assert five.examples == two.examples[:5] and five.passes == 2


def test_budget_arms_stop_on_a_prefix_of_the_same_steps():
    """B@A: fewer steps of the same sequence, no repetition; A@B: the sequence continued into further passes."""
    reference = plan(lengths=ARM_B, max_steps=60)  # twenty passes of the one step sequence
    counts_b = [n // 2 for n in ARM_B]
    a_total = sum(ARM_A)  # A's budget through one pass
    b_at_a = plan(lengths=ARM_B, budget=a_total, counts=ARM_B)
    n = len(b_at_a.steps)
    assert 1 <= n < 3 and b_at_a.examples == reference.examples[:n] and b_at_a.passes == 1
    assert max(Counter(b_at_a.consumed()).values()) == 1  # no repetition
    totals = np.cumsum([sum(ARM_B[i] for i in s) for s in step_ids_idx(b_at_a)])
    assert totals[-1] >= a_total > (totals[-2] if n > 1 else 0)  # stops at the first step reaching it
    a_at_b = plan(lengths=ARM_A, budget=sum(ARM_B), counts=ARM_A)
    m = len(a_at_b.steps)
    assert 3 < m < 60 and a_at_b.examples == reference.examples[:m] and a_at_b.passes > 1
    assert plan(budget=0, counts=counts_b).steps == ()


def step_ids_idx(p: batching.StagePlan) -> list[list[int]]:
    out, first = [], 0
    for n in p.steps:
        out.append([i for b in p.batches[first : first + n] for i in b])
        first += n
    return out


def test_duplicate_ids_and_empty_blocks_are_refused():
    with pytest.raises(TrajhpcError, match="example id 'x' occurs twice"):
        plan(["x", "y", "x"], [1, 2, 3])
    with pytest.raises(TrajhpcError, match="stage 1: the block has no training examples"):
        plan([], [])


def test_examples_per_step_defaults_to_batch_size_times_grad_accum_and_is_omitted_from_the_spec():
    assert batching.examples_per_step(TrainSpec(batch_size=8, grad_accum=2)) == 16
    assert batching.examples_per_step(TrainSpec(examples_per_step=5)) == 5
    assert "examples_per_step" not in TrainSpec().model_dump()
    assert TrainSpec(examples_per_step=16).model_dump()["examples_per_step"] == 16
    assert train.largest_batch_tokens([10, 300], 8, None, 4) == 1200
    assert train.largest_batch_tokens([10, 300], 8, 4096, 16) == 4096


# ---------------------------------------------------------------- every condition of the bundled lv3 data


def test_every_condition_of_lv3_takes_the_same_steps_under_the_grid_settings(tiny, repo_root):
    """All conditions, all four blocks, the grid's training settings: equal hashes and step counts."""
    _, tokenizer = tiny
    manifest = yaml.safe_load((Path(repo_root) / "manifests" / "grid.yaml").read_text())
    cfg = TrainSpec(**manifest["train"])
    assert batching.examples_per_step(cfg) == 16 and cfg.tokens_per_batch
    data = load_study_data(DataSpec())
    assert sum(len(r) for r in data.train.values()) > 600
    for stage, block in enumerate(data.blocks, start=1):
        records = data.train[block]
        plans = {}
        for condition in CONDITIONS:
            examples = tokenize_examples(
                tokenizer, records, condition, k=2 if condition == "last-k" else None, max_seq_len=cfg.max_seq_len
            )
            ids = [e.record.uid for e in examples]
            plans[condition] = batching.spec_stage_batches(cfg, ids, [len(e.input_ids) for e in examples], seed=3,
                                                           stage=stage)
        hashes = {c: p.examples for c, p in plans.items()}
        assert len(set(hashes.values())) == 1, block
        assert len(hashes["A"]) == 2 * -(-len(records) // 16)  # 2 epochs of ceil(n / 16) steps
        assert sum(plans["B"].steps) >= sum(plans["A"].steps)  # B's longer prompts: more micro-batches


# ---------------------------------------------------------------- micro-batches: the step's gradient


def lora_model(path, seed=0):
    torch.manual_seed(seed)
    base = train.load_base_model(path, quantization="none", compute_dtype=torch.float32, device=CPU,
                                 gradient_checkpointing=False)
    return train.attach_lora(base, LoraSpec(r=4, alpha=8, dropout=0.0))


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


@pytest.fixture(scope="module")
def block(tiny):
    _, tokenizer = tiny
    data = load_study_data(DataSpec(max_train_per_block=8))
    return tokenize_examples(tokenizer, data.train["care-appointments"], "B", max_seq_len=384)[:8]


def test_splitting_a_step_leaves_its_gradient_unchanged(tiny, block):
    """One step of 8 examples as 1, 2 and 4 micro-batches through train_batches: the same update."""
    path, tokenizer = tiny
    # SGD at lr 1 without clipping: the update is the step's gradient.
    cfg = TrainSpec(lr=1.0, schedule="constant", warmup_ratio=0.0, max_grad_norm=1e9)
    order = sorted(range(8), key=lambda i: len(block[i].input_ids))
    updates = []
    for ways in (1, 2, 4):
        size = 8 // ways
        micro = tuple(tuple(order[j : j + size]) for j in range(0, 8, size))
        stage_plan = batching.StagePlan(micro, (ways,), 1)
        model = lora_model(path)
        # LoRA B starts at zero, so A has no gradient; make B non-zero (the same in every run).
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.linspace(-0.01, 0.01, p.numel()).reshape(p.shape))
        before = lora_weights(model)
        optimizer = torch.optim.SGD(train.trainable_parameters(model), lr=cfg.lr)
        train.train_batches(model, optimizer, block, stage_plan, cfg, pad_id=tokenizer.pad_token_id)
        after = lora_weights(model)
        updates.append({k: before[k] - after[k] for k in before})
    assert any(u.abs().max() > 0 for u in updates[0].values())
    for other in updates[1:]:
        for k in updates[0]:
            torch.testing.assert_close(other[k], updates[0][k], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- the first step learns (issue 22 item 1)


def test_warmup_starts_above_zero_and_a_one_step_stage_runs_at_lr():
    param = torch.nn.Parameter(torch.zeros(1))
    for schedule in ("cosine", "linear", "constant"):
        cfg = TrainSpec(lr=1.0, schedule=schedule, warmup_ratio=0.1)
        for n in (1, 3, 40):
            optimizer = torch.optim.SGD([param], lr=cfg.lr)
            scheduler = train.build_scheduler(optimizer, cfg, n)
            lrs = []
            for _ in range(n):
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
            assert all(lr > 0 for lr in lrs), (schedule, n, lrs)
            if n == 1:
                assert lrs == [1.0]
            if n == 40:  # 4 warm-up steps: 1/4, 2/4, 3/4, then lr
                assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    legacy = train.build_scheduler(torch.optim.SGD([param], lr=1.0), TrainSpec(), 1, warmup_from_zero=True)
    assert legacy.get_last_lr() == [0.0]  # recipe 1, kept for the tiny model's pre-training only


def _one_step(path, tokenizer, block, lr):
    cfg = TrainSpec(lr=lr, batch_size=4, max_steps=1)
    model = lora_model(path)
    ids = [e.record.uid for e in block]
    stage_plan = batching.spec_stage_batches(cfg, ids, [len(e.input_ids) for e in block], seed=0, stage=1)
    before = lora_weights(model)
    lrs = []
    train.train_batches(model, train.build_optimizer(model, cfg), block, stage_plan, cfg,
                        pad_id=tokenizer.pad_token_id, on_step=lambda r: lrs.append(r.lr))
    batch = {k: v for k, v in batching.collate(block, tokenizer.pad_token_id).items()}
    model.eval()
    with torch.no_grad():
        loss = float(train.supervised_loss(model, batch, sum(batching.target_tokens(e) for e in block)))
    return before, lora_weights(model), lrs, loss


def test_max_steps_1_changes_the_adapter_and_the_lr_matters(tiny, block):
    path, tokenizer = tiny
    before, after, lrs, loss_small = _one_step(path, tokenizer, block, 1e-3)
    assert lrs == [1e-3]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    _, _, _, loss_large = _one_step(path, tokenizer, block, 1e-1)
    assert abs(loss_large - loss_small) > 1e-4


# ---------------------------------------------------------------- two arms of a unit through the real job


def test_two_arms_of_a_unit_log_the_same_examples_step_by_step(tmp_path):
    from trajhpc.job.run import run_job

    base = {
        "order": ["cost-insurance-other", "care-appointments"], "seed": 2, "recipe": 2,
        "data": {"max_train_per_block": 10, "max_heldout_per_block": 1},
        "train": {"epochs": 1, "examples_per_step": 4, "tokens_per_batch": 400, "max_seq_len": 384},
        "lora": {"r": 4, "alpha": 8}, "eval": {"batch_size": 8, "max_new_tokens": 4},
    }
    logs = {}
    for condition in ("A", "B"):
        spec = JobSpec.model_validate(base | {"condition": condition})
        run_job(spec, tmp_path / condition, study="steps-test")
        lines = (tmp_path / condition / "train_log.jsonl").read_text().splitlines()
        logs[condition] = [json.loads(line) for line in lines]
    a, b = ([(e["stage"], e["step"], e["examples"]) for e in logs[c]] for c in ("A", "B"))
    assert a == b and len(a) == 2 * 3  # 10 examples, 4 a step: 3 steps per stage
    assert all(len(h) == 12 for _, _, h in a)
    assert len({h for _, _, h in a}) == len(a)
