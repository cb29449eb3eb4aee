"""Teacher-forced scoring of the gold call (eval.gold_likelihood): agrees with a plain forward pass,
does not depend on batching or padding, and reaches prediction rows and metrics only when asked for."""

from __future__ import annotations

import json

import pytest
import torch

from trajhpc.data.conditions import tokenize_examples
from trajhpc.data.splits import load_study_data
from trajhpc.job import train
from trajhpc.job.evaluate import end_of_turn_ids, gold_logit_slice, gold_token_count, teacher_forced
from trajhpc.job.scoring import GOLD_KEYS, mean_gold_scores
from trajhpc.spec import DataSpec, JobSpec


@pytest.fixture(scope="module")
def model_and_items(tiny):
    """The shipped tiny model and real held-out (prompt, gold call) pairs of every block, as the job builds them."""
    path, tokenizer = tiny
    data = load_study_data(DataSpec(max_heldout_per_block=3))
    records = [r for b in data.blocks for r in data.heldout[b]]
    examples = tokenize_examples(tokenizer, records, "B", max_seq_len=1024)
    special = set(tokenizer.all_special_ids)
    prompts = [e.prompt_ids for e in examples]
    golds = []
    for e in examples:
        target = e.input_ids[len(e.prompt_ids):]
        golds.append(target[: gold_token_count(target, special)])
    model = train.load_base_model(path, quantization="none", compute_dtype=torch.float32,
                                  device=torch.device("cpu"), gradient_checkpointing=False)
    return model, tokenizer, prompts, golds


def by_hand(model, prompt, gold) -> tuple[float, float]:
    """One unpadded forward pass over prompt + gold, every logit kept."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(prompt) + list(gold)])).logits[0].float()
    scores = logits[len(prompt) - 1 : len(prompt) + len(gold) - 1]
    target = torch.tensor(list(gold))
    nll = torch.nn.functional.cross_entropy(scores, target).item()
    return (scores.argmax(-1) == target).float().mean().item(), nll


def test_the_gold_slice_is_the_positions_that_predict_the_gold():
    # keep = 5 last positions of [.. p_last g1 g2 g3]: p_last sits 4th from the end and predicts g1.
    assert gold_logit_slice(5, 3) == slice(1, 4)
    assert gold_logit_slice(4, 3) == slice(0, 3)  # the longest gold of a batch: keep = its length + 1


def test_teacher_forced_equals_a_plain_forward_pass_whatever_the_batching(model_and_items):
    model, tokenizer, prompts, golds = model_and_items
    expected = [by_hand(model, p, g) for p, g in zip(prompts, golds)]
    for batch_size, per_batch in ((1, None), (5, None), (12, None), (1, 2048)):
        got = teacher_forced(model, prompts, golds, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
                             tokens_per_batch=per_batch)
        assert len(got) == len(expected)
        for (acc, nll), (acc_hand, nll_hand) in zip(got, expected):
            assert acc == pytest.approx(acc_hand, abs=1e-6) and nll == pytest.approx(nll_hand, abs=1e-4)
    # The scores can fail: a gold that is not what follows scores lower than the real one.
    wrong = teacher_forced(model, prompts, [list(reversed(g)) for g in golds], pad_id=tokenizer.pad_token_id,
                           batch_size=12)
    assert sum(n for _, n in wrong) > sum(n for _, n in expected)


def test_an_empty_gold_is_unscored_and_left_out_of_the_means(model_and_items):
    model, tokenizer, prompts, golds = model_and_items
    got = teacher_forced(model, prompts[:2], [golds[0], []], pad_id=tokenizer.pad_token_id, batch_size=2)
    assert got[1] == (None, None) and got[0][0] is not None
    assert mean_gold_scores([(0.5, 2.0), (None, None), (1.0, 1.0)]) == {"gold_token_acc": 0.75, "gold_nll": 1.5}
    assert mean_gold_scores([]) == {"gold_token_acc": None, "gold_nll": None}


def test_the_option_keeps_job_ids_and_is_strict():
    base = {"condition": "A", "order": ["care-appointments"], "seed": 0}
    plain = JobSpec.model_validate(base)
    off = JobSpec.model_validate({**base, "eval": {"gold_likelihood": False}})
    on = JobSpec.model_validate({**base, "eval": {"gold_likelihood": True}})
    assert off.job_id == plain.job_id and on.job_id != plain.job_id
    assert "gold_likelihood" not in json.dumps(plain.model_dump(mode="json"))
    with pytest.raises(ValueError, match="gold_likelihood"):
        JobSpec.model_validate({**base, "eval": {"gold_likelihood": "yes"}})


@pytest.mark.slow
def test_a_job_scores_the_gold_only_when_asked(tmp_path):
    from trajhpc.job.run import run_job

    spec = {
        "condition": "A", "order": ["cost-insurance-other"], "seed": 1,
        "data": {"max_train_per_block": 8, "max_heldout_per_block": 2},
        "train": {"max_steps": 2, "batch_size": 4, "max_seq_len": 384},
        "lora": {"r": 4, "alpha": 8},
        "eval": {"max_new_tokens": 4, "backend": "merged", "also_under": ["B"]},
    }
    finals = {}
    for asked, backend in ((False, "merged"), (True, "merged"), (True, "peft")):
        job = tmp_path / f"{asked}-{backend}"
        settings = {**spec["eval"], "gold_likelihood": asked, "backend": backend}
        metrics = run_job(JobSpec.model_validate({**spec, "eval": settings}), job)
        rows = [json.loads(r) for r in (job / "predictions" / "stage-1.jsonl").read_text().splitlines()]
        assert len(rows) == 16  # 4 blocks x 2 items, under A and again under B
        per_block = [b for s in metrics["stages"] for b in s["per_block"].values()]
        per_block += [b for s in metrics["stages"] for u in s["also_under"].values() for b in u["per_block"].values()]
        if not asked:  # files as before the option
            assert not any(k in r for r in rows for k in GOLD_KEYS)
            assert not any(k in b for b in per_block for k in GOLD_KEYS)
            continue
        assert all(0 <= r["gold_token_acc"] <= 1 and r["gold_nll"] > 0 for r in rows)
        assert all(0 <= b["gold_token_acc"] <= 1 and b["gold_nll"] > 0 for b in per_block)
        # Each block's figure is the mean of its rows'.
        final = metrics["stages"][-1]["per_block"]
        own = [r for r in rows if "eval_condition" not in r]
        for block, scores in final.items():
            accs = [r["gold_token_acc"] for r in own if r["block"] == block]
            assert scores["gold_token_acc"] == pytest.approx(sum(accs) / len(accs))
        finals[backend] = final
    # The merged copy is the 4-bit model + adapter up to rounding: the scores agree as closely.
    for block, merged in finals["merged"].items():
        peft = finals["peft"][block]
        assert peft["gold_nll"] == pytest.approx(merged["gold_nll"], rel=1e-3)
        assert abs(peft["gold_token_acc"] - merged["gold_token_acc"]) <= 0.05


def test_end_of_turn_is_not_part_of_the_gold(model_and_items):
    _, tokenizer, _, golds = model_and_items
    assert not any(t in end_of_turn_ids(tokenizer) for g in golds for t in g)
