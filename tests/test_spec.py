"""JobSpec: canonical form, stable job ids, clear validation errors."""

import json

import pytest

from trajhpc.core.errors import InputError
from trajhpc.spec import EvalSpec, JobSpec, TokenBudget, load_spec, spec_from_dict

ORDER = ("care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other")


def test_job_id_is_stable_across_runs_and_machines():
    # A golden value: if it changes, every existing run directory is orphaned. Written as
    # recipe 1 (what the spec was before the recipe version existed): that id never moves.
    spec = JobSpec(condition="B", seed=3, order=ORDER, recipe=1)
    assert spec.job_id == spec_from_dict(json.loads(spec.canonical_json())).job_id
    assert len(spec.job_id) == 12
    # The same spec as before the eval.max_new_tokens default went from 64 to 160 (a change
    # of what is computed, so of the id) keeps its old id: hashing itself is unchanged.
    assert spec.model_copy(update={"eval": EvalSpec(max_new_tokens=64)}).job_id == "0845a8762ea9"
    assert spec.job_id == "01a9c03dd140"
    # Today's recipe: the same spec computes something else, under another id.
    assert JobSpec(condition="B", seed=3, order=ORDER).job_id == "34d959e431b6"


def test_a_spec_of_another_recipe_is_refused_before_the_job_starts(tmp_path):
    from trajhpc.core.errors import InputError
    from trajhpc.spec import check_recipe

    check_recipe(JobSpec(condition="B", order=ORDER))
    with pytest.raises(InputError, match=r"spec.json: recipe: job \w+ was made for recipe v1; this trajhpc computes"):
        check_recipe(JobSpec(condition="B", order=ORDER, recipe=1), tmp_path / "spec.json")


def test_job_id_changes_with_anything_that_changes_the_computation():
    base = JobSpec(condition="A", seed=0, order=ORDER)
    assert base.job_id != base.model_copy(update={"seed": 1}).job_id
    assert base.job_id != JobSpec(condition="B", seed=0, order=ORDER).job_id
    assert base.job_id != JobSpec(condition="A", seed=0, order=ORDER[::-1]).job_id


def test_canonical_json_is_sorted_and_compact():
    text = JobSpec(condition="A", order=ORDER).canonical_json()
    assert " " not in text.replace("training-data", "")  # no whitespace separators
    obj = json.loads(text)
    assert list(obj) == sorted(obj)
    assert obj["schema"] == "trajhpc.spec/1"


def test_arm_names():
    assert JobSpec(condition="A", order=ORDER).arm == "A"
    assert JobSpec(condition="A", order=ORDER, token_budget=TokenBudget(match="B")).arm == "A@B"
    supervised = TokenBudget(match="B", count="supervised")
    assert JobSpec(condition="A", order=ORDER, token_budget=supervised).arm == "A@B:supervised"
    assert JobSpec(condition="last-k", condition_k=2, order=ORDER).arm == "last-2"


def test_roundtrip_through_dict():
    spec = JobSpec(condition="A", order=ORDER, token_budget=TokenBudget(match="B", count="total"))
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"conditon": "A"}, "conditon"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"condition": "C"}, "condition"),
        ({"lora": {"rank": 8}}, "lora.rank"),
        ({"token_budget": {"match": "Z"}}, "token_budget.match"),
    ],
)
def test_bad_spec_names_file_and_field(tmp_path, patch, field):
    obj = {"condition": "A", "order": list(ORDER)}
    obj.update(patch)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(InputError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_last_k_needs_k_and_order_must_be_distinct():
    with pytest.raises(InputError, match="condition_k"):
        spec_from_dict({"condition": "last-k", "order": list(ORDER)})
    with pytest.raises(InputError, match="distinct"):
        spec_from_dict({"condition": "A", "order": ["a", "a"]})


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{\n "condition": "A",\n oops\n}')
    with pytest.raises(InputError, match=r"spec.json:3"):
        load_spec(path)


# ---------------------------------------------------------------- review fixes


def test_token_budget_counts_total_tokens_by_default():
    # Supervised tokens are the target call, equal under A, B, calls-only and last-k:
    # a supervised-matched arm would train exactly like its own condition.
    assert TokenBudget(match="B").count == "total"
    assert "supervised" in TokenBudget.__doc__ and "equal" in TokenBudget.__doc__
    spec = spec_from_dict({"condition": "A", "order": list(ORDER), "token_budget": {"match": "B"}})
    assert spec.token_budget.count == "total"
    # supervised stays a legal choice (e.g. when truncation differs between conditions)
    assert spec_from_dict(
        {"condition": "A", "order": list(ORDER), "token_budget": {"match": "B", "count": "supervised"}}
    ).token_budget.count == "supervised"


def test_eval_max_new_tokens_default_fits_the_longest_gold_calls():
    assert JobSpec(condition="A", order=ORDER).eval.max_new_tokens == 160


def test_grid_manifest_matches_total_tokens_and_generates_long_enough(repo_root):
    from trajhpc.study.manifest import load_manifest

    manifest = load_manifest(repo_root / "manifests" / "grid.yaml")
    budgets = [c.token_budget for c in manifest.conditions if getattr(c, "token_budget", None)]
    assert budgets and all(b.count == "total" for b in budgets)
    assert manifest.eval.max_new_tokens == 160


def test_match_last_k_needs_condition_last_k():
    with pytest.raises(InputError, match=r"token_budget.*'last-k'.*condition 'last-k'"):
        spec_from_dict({"condition": "A", "order": list(ORDER), "token_budget": {"match": "last-k"}})
    ok = spec_from_dict(
        {"condition": "last-k", "condition_k": 2, "order": list(ORDER), "token_budget": {"match": "last-k"}}
    )
    assert ok.arm == "last-2@last-k"


@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_unreadable_spec_file_is_an_input_error(tmp_path, kind):
    if kind == "directory":
        path = tmp_path
    else:
        path = tmp_path / "spec.json"
        path.write_bytes(b'{"condition": "\xff\xfe"}')
    with pytest.raises(InputError) as err:
        load_spec(path)
    assert str(path) in str(err.value)


def test_fields_added_later_leave_existing_ids_unchanged_at_their_default():
    from trajhpc.spec import TrainSpec

    spec = JobSpec(condition="B", seed=3, order=ORDER, recipe=1)
    explicit = spec.model_copy(
        update={"train": TrainSpec(tokens_per_batch=None), "eval": EvalSpec(tokens_per_batch=None, backend="peft")}
    )
    assert explicit.job_id == spec.job_id == "01a9c03dd140"
    assert "tokens_per_batch" not in spec.to_dict()["train"]
    assert "backend" not in spec.to_dict()["eval"]


def test_fields_added_later_change_the_id_when_set_and_round_trip():
    from trajhpc.spec import TrainSpec

    spec = JobSpec(condition="B", seed=3, order=ORDER)
    fast = spec.model_copy(
        update={
            "train": TrainSpec(tokens_per_batch=8192, gradient_checkpointing="auto"),
            "eval": EvalSpec(tokens_per_batch=32768, backend="merged"),
        }
    )
    assert len({spec.job_id, fast.job_id}) == 2
    assert fast.to_dict()["train"]["tokens_per_batch"] == 8192
    assert fast.to_dict()["eval"]["backend"] == "merged"
    assert spec_from_dict(fast.to_dict()) == fast
    assert spec_from_dict(json.loads(fast.canonical_json())).job_id == fast.job_id


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"train": {"gradient_checkpointing": "sometimes"}}, "train.gradient_checkpointing"),
        ({"train": {"tokens_per_batch": 4}}, "train.tokens_per_batch"),
        ({"eval": {"backend": "vllm2"}}, "eval.backend"),
    ],
)
def test_new_speed_fields_are_validated(patch, field):
    obj = JobSpec(condition="A", order=ORDER).to_dict()
    for key, value in patch.items():
        obj[key] = {**obj[key], **value}
    with pytest.raises(InputError) as err:
        spec_from_dict(obj, "spec.json")
    assert field in str(err.value)


def test_the_cached_job_id_is_the_hash_of_the_whole_canonical_json():
    # The aggregate's job id (trajhpc.spec.job_id_of) reuses the canonical text around order and
    # seed per template_key: it must equal id_of of the full form, whatever else the spec holds.
    from trajhpc.spec import DataSpec, TrainSpec, id_of, job_id_of, template_key

    specs = [
        JobSpec(condition="B", seed=3, order=ORDER, recipe=1),
        JobSpec(condition="B", seed=4, order=ORDER[::-1]),
        JobSpec(condition="A", seed=2**32 - 1, order=("é-block", 'q"uote\\'), token_budget=TokenBudget(match="B")),
        JobSpec(condition="last-k", condition_k=2, order=("x",), curriculum="replay", replay=0.125),
        JobSpec(condition="A", order=ORDER, data=DataSpec(root="/données", tool_docs="block", heldout_fraction=1e-05),
                train=TrainSpec(lr=3.5e-7, tokens_per_batch=8192)),
    ]
    for spec in specs:
        for variant in (spec, spec.model_copy(update={"seed": spec.seed + 1}), spec.model_copy(update={"order": ("z",)})):
            assert job_id_of(variant) == id_of(variant.to_dict()) == variant.job_id
            assert job_id_of(variant, template_key(variant)) == variant.job_id
    # Seed and order are the only fields the template leaves out.
    assert template_key(specs[1]) == template_key(specs[0].model_copy(update={"recipe": 2, "seed": 9}))
    assert template_key(specs[1]) != template_key(specs[1].model_copy(update={"condition": "A"}))
