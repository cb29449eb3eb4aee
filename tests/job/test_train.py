"""The training recipe: plans, batches, labels, the loop, the 4-bit path, checkpoints, generation."""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
from rich.console import Console

from trajhpc.data.conditions import IGNORE_INDEX, tokenize_examples
from trajhpc.data.splits import load_study_data
from trajhpc.job import batching, checkpoint, train
from trajhpc.job.evaluate import generate_greedy
from trajhpc.job.progress import StageProgress
from trajhpc.spec import DataSpec, LoraSpec, TrainSpec

CPU = torch.device("cpu")
BLOCK = "care-appointments"


@pytest.fixture(scope="module")
def examples(tiny):
    """Real bundled records of one block, tokenized under condition B."""
    _, tokenizer = tiny
    data = load_study_data(DataSpec(max_train_per_block=48))
    return tokenize_examples(tokenizer, data.train[BLOCK], "B", max_seq_len=512)


def lora_model(path, quantization="nf4", seed=0, lora=LoraSpec(r=8, alpha=16, dropout=0.0)):
    torch.manual_seed(seed)
    base = train.load_base_model(
        path, quantization=quantization, compute_dtype=torch.float32, device=CPU, gradient_checkpointing=False
    )
    return train.attach_lora(base, lora)


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


# ---------------------------------------------------------------- pure: batches and plans


def test_length_grouped_batches_cover_every_example_once_and_are_seeded():
    lengths = [int(x) for x in np.random.default_rng(0).integers(10, 500, size=101)]
    a = batching.length_grouped_batches(lengths, 8, np.random.default_rng(1))
    b = batching.length_grouped_batches(lengths, 8, np.random.default_rng(1))
    c = batching.length_grouped_batches(lengths, 8, np.random.default_rng(2))
    assert sorted(i for batch in a for i in batch) == list(range(101))
    assert a == b and a != c
    assert max(lengths[i] for i in a[0]) == max(lengths)  # longest batch first


def test_padding_is_under_5_percent_on_a_real_block(tiny):
    """A whole bundled block at the default batch size (8), condition B (the widest spread of lengths)."""
    _, tokenizer = tiny
    records = load_study_data(DataSpec()).train[BLOCK]
    lengths = [len(e.input_ids) for e in tokenize_examples(tokenizer, records, "B", max_seq_len=1024)]
    assert len(lengths) > 100
    plan = batching.stage_batches(lengths, batch_size=8, grad_accum=1, seed=0, stage=1)
    real = sum(lengths[i] for i in plan.consumed())
    padded = batching.padded_tokens(plan, lengths)
    assert padded >= real
    assert (padded - real) / padded < 0.05


def test_plan_epochs_and_passes():
    lengths = list(range(20, 40))  # 20 examples, 5 batches of 4
    one = batching.stage_batches(lengths, batch_size=4, grad_accum=2, seed=0, stage=1, epochs=1)
    assert sorted(one.consumed()) == list(range(20)) and one.passes == 1
    assert one.steps == (2, 2, 1)
    two = batching.stage_batches(lengths, batch_size=4, grad_accum=2, seed=0, stage=1, epochs=2)
    assert Counter(two.consumed()) == Counter({i: 2 for i in range(20)}) and two.passes == 2
    assert two.batches[:5] == one.batches and two.batches[5:] != one.batches  # fresh shuffle per pass
    other_stage = batching.stage_batches(lengths, batch_size=4, grad_accum=2, seed=0, stage=2, epochs=1)
    assert other_stage.batches != one.batches
    steps = batching.stage_batches(lengths, batch_size=4, grad_accum=3, seed=0, stage=1, max_steps=4)
    assert len(steps.batches) == 12 and steps.steps == (3, 3, 3, 3) and steps.passes == 3


def test_plan_with_budget_lands_within_one_batch():
    lengths = [int(x) for x in np.random.default_rng(3).integers(20, 200, size=30)]
    counts = [n // 3 for n in lengths]
    for budget in (1, 500, sum(counts), 3 * sum(counts) + 7):
        plan = batching.stage_batches(lengths, batch_size=4, grad_accum=2, seed=0, stage=1, budget=budget, counts=counts)
        consumed = [sum(counts[i] for i in b) for b in plan.batches]
        assert sum(consumed) >= budget > sum(consumed) - consumed[-1]
    empty = batching.stage_batches(lengths, batch_size=4, grad_accum=2, seed=0, stage=1, budget=0, counts=counts)
    assert empty.batches == () and empty.steps == () and empty.passes == 0


def test_plans_by_batch_size_are_unchanged():
    """Without tokens_per_batch, plans are byte-for-byte those of the code before token batches existed."""
    import hashlib

    h = hashlib.sha256()
    lengths = [int(x) for x in np.random.default_rng(7).integers(5, 900, size=157)]
    counts = [n // 4 for n in lengths]
    cases = [
        dict(batch_size=8, grad_accum=1, epochs=1.0), dict(batch_size=4, grad_accum=3, epochs=2.5),
        dict(batch_size=5, grad_accum=2, max_steps=40), dict(batch_size=8, grad_accum=2, budget=30000, counts=counts),
        dict(batch_size=3, grad_accum=1, epochs=0.3),
    ]
    for stage in (1, 2):
        for kw in cases:
            plan = batching.stage_batches(lengths, seed=11, stage=stage, **kw)
            h.update(repr((plan.batches, plan.steps, plan.passes, batching.padded_tokens(plan, lengths))).encode())
    assert h.hexdigest() == "fb99a729c511a676986f5125f8176bf8c36a0ff024ea5d4533fd0c8ed53a78ca"


def test_token_batches_cover_every_example_once_within_the_limit_and_are_seeded():
    lengths = [int(x) for x in np.random.default_rng(0).integers(10, 700, size=301)] + [2500, 3000]
    limit = 2048
    a = batching.token_batches(lengths, limit, np.random.default_rng(1))
    assert a == batching.token_batches(lengths, limit, np.random.default_rng(1))
    assert a != batching.token_batches(lengths, limit, np.random.default_rng(2))
    assert sorted(i for batch in a for i in batch) == list(range(len(lengths)))
    for batch in a:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= limit or len(batch) == 1  # over-long examples alone
    padded = sum(len(b) * max(lengths[i] for i in b) for b in a)
    assert padded - sum(lengths) <= batching.MAX_PADDING_SHARE * padded  # bounded over the pass
    assert a[0] == (302,)  # longest batch first


def test_token_batches_split_where_padding_is_saved_and_keep_dense_batches_whole():
    # Twelve 100s, then twelve 400s: one 4800-token batch of all 24 would be 37% padding;
    # the split goes between the two groups, and each group stays one batch.
    lengths = [100] * 12 + [400] * 12
    batches = batching.token_batches(lengths, 9600, np.random.default_rng(0))
    assert sorted(map(sorted, batches)) == [list(range(12)), list(range(12, 24))]
    # Padding already within the bound: no split at all.
    assert len(batching.token_batches([100] * 30 + [102] * 30, 8192, np.random.default_rng(0))) == 1


def test_token_batches_keep_padding_under_3_percent_on_a_real_block(tiny):
    _, tokenizer = tiny
    records = load_study_data(DataSpec()).train[BLOCK]
    lengths = [len(e.input_ids) for e in tokenize_examples(tokenizer, records, "B", max_seq_len=1024)]
    plan = batching.stage_batches(lengths, batch_size=8, grad_accum=1, seed=0, stage=1, tokens_per_batch=8192)
    assert sorted(plan.consumed()) == list(range(len(lengths))) and plan.passes == 1
    real = sum(lengths[i] for i in plan.consumed())
    padded = batching.padded_tokens(plan, lengths)
    assert (padded - real) / padded < 0.03
    assert all(len(b) * max(lengths[i] for i in b) <= 8192 for b in plan.batches)
    # 15 batches of ~12 rows (~4k padded tokens) at 2.9% padding: lengths 100..733 are spread,
    # so the 3% bound, not the token limit, sets the size.
    assert len(plan.batches) < len(lengths) / 10


def test_token_plan_epochs_steps_and_budget():
    lengths = [int(x) for x in np.random.default_rng(4).integers(20, 300, size=60)]
    kw = dict(batch_size=8, grad_accum=2, seed=0, stage=1, tokens_per_batch=1024)
    one = batching.stage_batches(lengths, **kw)
    assert sorted(one.consumed()) == list(range(60)) and one.passes == 1
    assert one == batching.stage_batches(lengths, **kw)
    assert one.batches != batching.stage_batches(lengths, **(kw | {"stage": 2})).batches
    passes = [batching.token_batches(lengths, 1024, np.random.default_rng([0, 1, p])) for p in range(3)]
    assert one.batches == tuple(passes[0])
    more = batching.stage_batches(lengths, **kw, epochs=2.5)
    assert more.batches == tuple(passes[0] + passes[1] + passes[2][: math.ceil(len(passes[2]) / 2)])
    assert more.passes == 3 and sum(more.steps) == len(more.batches)
    assert set(Counter(more.consumed()).values()) <= {2, 3}
    steps = batching.stage_batches(lengths, **kw, max_steps=len(passes[0]))  # 2 micro-batches a step: two passes
    assert steps.steps == (2,) * len(passes[0]) and steps.passes == 2
    counts = [n // 3 for n in lengths]
    budget = 2 * sum(counts) + 5
    plan = batching.stage_batches(lengths, **kw, budget=budget, counts=counts)
    consumed = [sum(counts[i] for i in b) for b in plan.batches]
    assert sum(consumed) >= budget > sum(consumed) - consumed[-1] and plan.passes == 3


def test_compute_dtype_auto_is_fp32_on_cpu_and_bf16_on_cuda():
    assert train.resolve_compute_dtype("auto", CPU) == torch.float32
    assert train.resolve_compute_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert train.resolve_compute_dtype("fp16", CPU) == torch.float16


# ---------------------------------------------------------------- labels and attention


def test_only_target_tokens_carry_labels(tiny, examples):
    _, tokenizer = tiny
    batch_examples = examples[:4]
    batch = batching.collate(batch_examples, tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in batch_examples)
    assert batch["input_ids"].shape == (4, width)
    for row, ex in enumerate(batch_examples):
        labels, mask = batch["labels"][row], batch["attention_mask"][row]
        n = len(ex.input_ids)
        assert mask[:n].all() and not mask[n:].any()
        assert (labels[n:] == IGNORE_INDEX).all()  # padding
        assert (labels[: len(ex.prompt_ids)] == IGNORE_INDEX).all()  # prompt
        supervised = labels[labels != IGNORE_INDEX].tolist()
        assert supervised == list(ex.input_ids[len(ex.prompt_ids) :])
        assert tokenizer.decode(supervised) == ex.target + tokenizer.eos_token


def test_no_attention_across_examples_in_a_batch(tiny, examples):
    """Each example's logits in a padded batch equal its logits alone."""
    path, tokenizer = tiny
    model = lora_model(path, quantization="none").eval()
    batch_examples = sorted(examples[:3], key=lambda e: len(e.input_ids))
    batch = batching.collate(batch_examples, tokenizer.pad_token_id)
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row, ex in enumerate(batch_examples):
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            torch.testing.assert_close(together[row, : len(ex.input_ids)], alone, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the loop and the 4-bit path


def test_4bit_path_runs_on_cpu_and_loss_falls(tiny, examples):
    import bitsandbytes as bnb

    path, tokenizer = tiny
    model = lora_model(path)
    projections = [m for n, m in model.named_modules() if n.endswith("q_proj.base_layer")]
    assert len(projections) == 2 and all(isinstance(m, bnb.nn.Linear4bit) for m in projections)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    cfg = TrainSpec(lr=1e-2, batch_size=4, schedule="constant", warmup_ratio=0.0)
    subset = examples[:8]
    plan = batching.stage_batches([len(e.input_ids) for e in subset], batch_size=4, grad_accum=1, seed=0, stage=1, max_steps=12)
    losses: list[float] = []
    result = train.train_batches(
        model, train.build_optimizer(model, cfg), subset, plan, cfg,
        pad_id=tokenizer.pad_token_id, on_step=lambda report: losses.append(report.loss),
    )
    assert result.steps == len(losses) == 12
    # Relative: the pre-trained tiny model starts low (about 0.15 on these examples).
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert result.tokens == sum(len(subset[i].input_ids) for i in plan.consumed())


def test_adapter_carries_over_blocks_and_reloads_bit_identically(tmp_path, tiny, examples):
    path, tokenizer = tiny
    cfg = TrainSpec(lr=5e-3, batch_size=4)
    lora = LoraSpec(r=4, alpha=8, dropout=0.1)
    model = lora_model(path, lora=lora)
    optimizer = train.build_optimizer(model, cfg)
    initial = lora_weights(model)
    lengths = [len(e.input_ids) for e in examples]

    def stage(k):
        plan = batching.stage_batches(lengths, batch_size=4, grad_accum=1, seed=0, stage=k, max_steps=2)
        return train.train_batches(model, optimizer, examples, plan, cfg, pad_id=tokenizer.pad_token_id)

    stage(1)
    after_1 = lora_weights(model)
    state = checkpoint.CheckpointState(job_id="x", stage=1, consumed=0, train_loss=None, train_seconds=0.0, tokens={})
    ckpt = checkpoint.save_checkpoint(tmp_path, model, optimizer, state)
    assert any(not torch.equal(initial[k], after_1[k]) for k in initial)
    stage(2)
    after_2 = lora_weights(model)
    assert any(not torch.equal(after_1[k], after_2[k]) for k in after_1)  # stage 2 trains the same adapter

    torch.manual_seed(123)  # the fresh adapter's random init must not matter
    base = train.load_base_model(
        path, quantization="nf4", compute_dtype=torch.float32, device=CPU, gradient_checkpointing=False
    )
    reloaded = train.attach_lora(base, lora, ckpt / "adapter")
    again = lora_weights(reloaded)
    assert again.keys() == after_1.keys()
    assert all(torch.equal(again[k], after_1[k]) and again[k].dtype == after_1[k].dtype for k in again)
    assert all(p.requires_grad for n, p in reloaded.named_parameters() if "lora_" in n)

    # Restoring in place (what the job does at every stage boundary) gives the same bytes.
    checkpoint.restore_checkpoint(ckpt, model, optimizer)
    assert all(torch.equal(v, after_1[k]) for k, v in lora_weights(model).items())
    assert (tmp_path / "checkpoint" / "trainer_state.json").exists()
    assert not (tmp_path / ".checkpoint.tmp").exists() and not (tmp_path / ".checkpoint.old").exists()


# ---------------------------------------------------------------- generation


class EchoModel(torch.nn.Module):
    """Fake model: 'generates' last prompt token + 1, then EOS(3), then junk; records its inputs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls.append((input_ids.clone(), attention_mask.clone()))
        last = input_ids[:, -1:]
        new = torch.cat([last + 1, torch.full_like(last, 3), torch.full_like(last, 9)], dim=1)
        return torch.cat([input_ids, new], dim=1)


def test_generate_greedy_left_pads_restores_order_and_cuts_at_eos():
    model = EchoModel()
    prompts = [[5, 6], [7, 8, 9, 10], [11]]
    out = generate_greedy(model, prompts, pad_id=0, eos_ids=[3], batch_size=2, max_new_tokens=3)
    assert out == [[7], [11], [12]]  # input order, new tokens only, cut before EOS
    first_ids, first_mask = model.calls[0]  # longest prompts first, left-padded
    assert first_ids.tolist() == [[7, 8, 9, 10], [0, 0, 5, 6]]
    assert first_mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert model.training  # restored


def test_batched_generation_equals_one_at_a_time(tiny, examples):
    path, tokenizer = tiny
    model = lora_model(path, quantization="none")
    prompts = [e.prompt_ids for e in examples[:6]]
    kwargs = dict(pad_id=tokenizer.pad_token_id, eos_ids=[tokenizer.eos_token_id], max_new_tokens=6)
    batched = generate_greedy(model, prompts, batch_size=6, **kwargs)
    assert batched == generate_greedy(model, prompts, batch_size=1, **kwargs)
    assert all(0 < len(ids) <= 6 for ids in batched)


# ---------------------------------------------------------------- progress


def test_progress_prints_plain_periodic_lines_when_not_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    now = [0.0]
    with StageProgress("stage 1/2 L1", 5, console, interval_s=10, clock=lambda: now[0]) as progress:
        for step in range(1, 6):
            now[0] += 4.0
            progress.update(step, 5, 2.0 / step, 100)
    lines = buf.getvalue().splitlines()
    # 4 s per step: a line at t=12 (step 3) and at the last step, not at every step.
    assert lines == [
        "stage 1/2 L1: step 3/5 loss 0.6667 25 tok/s ETA 0:00:08",
        "stage 1/2 L1: step 5/5 loss 0.4000 25 tok/s ETA 0:00:00",
    ]
    assert "\x1b" not in buf.getvalue()


def test_gradient_checkpointing_with_4bit_weights_gives_the_same_step(tiny, examples):
    """QLoRA with gradient checkpointing: the layers really are recomputed, and one step's loss
    and adapter gradients equal those without checkpointing."""
    path, tokenizer = tiny
    batch = batching.collate(examples[:4], tokenizer.pad_token_id)
    n_target = sum(batching.target_tokens(e) for e in examples[:4])
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        base = train.load_base_model(
            path, quantization="nf4", compute_dtype=torch.float32, device=CPU, gradient_checkpointing=checkpointing
        )
        model = train.attach_lora(base, LoraSpec(r=8, alpha=16, dropout=0.0))
        projection = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
        calls = []
        projection.register_forward_hook(lambda *args: calls.append(1))
        model.train()
        out = model(**batch, num_items_in_batch=n_target)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        optimizer = train.build_optimizer(model, TrainSpec(lr=1e-3))
        optimizer.step()
        results[checkpointing] = (out.loss.item(), grads, len(calls), lora_weights(model))
    (loss_off, grads_off, calls_off, weights_off), (loss_on, grads_on, calls_on, weights_on) = results[False], results[True]
    assert (calls_off, calls_on) == (1, 2)  # with checkpointing the layer's modules run again in backward
    assert loss_on == pytest.approx(loss_off, abs=1e-5)
    assert grads_on.keys() == grads_off.keys() and all("lora_" in n for n in grads_on)
    assert any(g.abs().sum() > 0 for n, g in grads_on.items() if "lora_B" in n)  # the adapter learns
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(weights_on[name], weights_off[name], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- logits only where the loss is


@pytest.mark.parametrize("quantization, checkpointing", [("none", False), ("none", True), ("nf4", False), ("nf4", True)])
def test_supervised_loss_equals_the_models_own_loss_and_gradients(tiny, examples, quantization, checkpointing):
    """On a right-padded batch: the same loss and LoRA gradients as ``model(**batch, num_items_in_batch=n)``."""
    path, tokenizer = tiny
    torch.manual_seed(0)
    base = train.load_base_model(
        path, quantization=quantization, compute_dtype=torch.float32, device=CPU,
        gradient_checkpointing=checkpointing,
    )
    model = train.attach_lora(base, LoraSpec(r=8, alpha=16, dropout=0.0))
    with torch.no_grad():  # a non-zero lora_B, so lora_A gets gradients too
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.train()
    batch_examples = examples[:5]
    batch = batching.collate(batch_examples, tokenizer.pad_token_id)
    assert (batch["attention_mask"] == 0).any()  # right padding present
    n_target = sum(batching.target_tokens(e) for e in batch_examples) + 7  # a step's count, not this batch's

    def run(loss_fn):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    own_loss, own_grads = run(lambda: model(**batch, num_items_in_batch=n_target).loss)
    loss, grads = run(lambda: train.supervised_loss(model, batch, n_target))
    assert loss == pytest.approx(own_loss, rel=1e-5)
    assert grads.keys() == own_grads.keys() and all("lora_" in n for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        torch.testing.assert_close(grads[name], own_grads[name], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- gradient checkpointing "auto"


def _llama_8b():
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256,
    )


def test_memory_estimate_decides_checkpointing():
    config, gib = _llama_8b(), 2**30
    kw = dict(config=config, compute_dtype=torch.bfloat16, quantization="nf4", free_bytes=139 * gib)
    # Calibration: 8 x 1024 tokens peaked at ~98 GiB on an H200 without the full logits.
    need = train.training_memory_bytes(config, 8 * 1024, compute_dtype=torch.bfloat16, quantization="nf4")
    assert 95 * gib < need < 115 * gib
    assert train.resolve_gradient_checkpointing("auto", batch_tokens=8 * 1024, **kw) is False
    assert train.resolve_gradient_checkpointing("auto", batch_tokens=64 * 1024, **kw) is True
    assert train.resolve_gradient_checkpointing("auto", batch_tokens=8 * 1024, **(kw | {"free_bytes": 80 * gib}))
    assert train.resolve_gradient_checkpointing(True, batch_tokens=16, **kw) is True
    assert train.resolve_gradient_checkpointing(False, batch_tokens=10**7, **kw) is False
    assert train.largest_batch_tokens([10, 300, 40], 8, None) == 2400
    assert train.largest_batch_tokens([10, 300, 40], 8, 256) == 300  # an over-long example forms its own batch
    assert train.largest_batch_tokens([10, 300, 40], 8, 4096) == 4096


def test_gradient_checkpointing_auto_is_off_for_the_tiny_model_on_cpu(tiny):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(tiny[0]))
    assert not train.resolve_gradient_checkpointing(
        "auto", config=config, batch_tokens=8 * 1024, compute_dtype=torch.float32, quantization="nf4",
        free_bytes=train.free_memory_bytes(CPU),
    )
