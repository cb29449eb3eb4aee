"""Grid expansion: order designs, seeds, arms, determinism, job ids and run directories."""

from __future__ import annotations

import math
from itertools import permutations
from pathlib import Path

import pytest

from trajhpc.core.errors import InputError
from trajhpc.spec import JobSpec
from trajhpc.study.grid import all_orders, expand, latin_orders, random_orders, resolve_seeds
from trajhpc.study.manifest import parse_manifest

BLOCKS = ("care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other")


# ---------------------------------------------------------------- orders


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_latin_orders_put_every_block_once_in_every_position(n):
    blocks = tuple(f"b{i}" for i in range(n))
    orders = latin_orders(blocks)
    assert len(orders) == n
    assert orders[0] == blocks  # starts from the partition order
    for order in orders:
        assert sorted(order) == sorted(blocks)  # each order is a permutation
    for position in range(n):
        assert sorted(order[position] for order in orders) == sorted(blocks)


def test_latin_orders_are_cyclic_shifts():
    assert latin_orders(("a", "b", "c")) == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")]


def test_all_orders_is_every_permutation():
    orders = all_orders(BLOCKS)
    assert len(orders) == math.factorial(4) == len(set(orders))
    assert set(orders) == set(permutations(BLOCKS))
    assert orders[0] == BLOCKS


def test_random_orders_distinct_and_deterministic():
    first = random_orders(BLOCKS, 10, seed=3)
    assert first == random_orders(BLOCKS, 10, seed=3)
    assert len(set(first)) == 10
    assert all(sorted(o) == sorted(BLOCKS) for o in first)
    assert first != random_orders(BLOCKS, 10, seed=4)


def test_random_orders_can_take_all_and_no_more():
    assert set(random_orders(("a", "b", "c"), 6, seed=0)) == set(permutations("abc"))
    with pytest.raises(ValueError, match="asks for 7 distinct orders but 3 blocks have only 6"):
        random_orders(("a", "b", "c"), 7, seed=0)


def test_random_orders_scale_to_many_blocks():
    blocks = tuple(f"b{i}" for i in range(20))  # 20! permutations: sampled, never listed
    orders = random_orders(blocks, 50, seed=1)
    assert len(set(orders)) == 50


# ---------------------------------------------------------------- seeds and the grid


def _manifest(extra: str = "", conditions: str = "[A, B]"):
    return parse_manifest(f"study: st\nconditions: {conditions}\n{extra}")


def test_seed_forms():
    assert resolve_seeds(_manifest("seeds: {count: 3, start: 5}\n")) == [5, 6, 7]
    assert resolve_seeds(_manifest("seeds: [2, 0, 2]\n")) == [2, 0]


def test_expand_nests_arms_seeds_orders(tmp_path):
    jobs = expand(_manifest("seeds: [0, 1]\norders: latin\n"), tmp_path)
    assert len(jobs) == 2 * 2 * 4
    keys = [(j.spec.condition, j.spec.seed, j.spec.order) for j in jobs]
    assert keys == [(c, s, o) for c in "AB" for s in (0, 1) for o in latin_orders(BLOCKS)]


def test_job_ids_and_run_dirs(tmp_path):
    jobs = expand(_manifest("model: tiny\ntrain: {lr: 0.001}\n"), tmp_path / "runs")
    for job in jobs:
        assert job.job_id == job.spec.job_id and len(job.job_id) == 12
        assert job.run_dir == tmp_path / "runs" / "st" / job.job_id
        assert job.study == "st"
        assert job.spec.train.lr == 0.001 and job.spec.model == "tiny-v4"  # the recipe version
        # the spec round-trips through its JSON form with the same id
        assert JobSpec.model_validate(job.spec.to_dict()).job_id == job.job_id
    assert len({j.job_id for j in jobs}) == len(jobs)


def test_tiny_jobs_record_the_recipe_version_other_models_do_not(tmp_path):
    seeded = expand(_manifest("model: tiny-seed4\n"), tmp_path)
    assert {j.spec.model for j in seeded} == {"tiny-v4-seed4"}
    # Writing the version gives the same jobs as leaving it to the current recipe.
    assert [j.job_id for j in expand(_manifest("model: tiny-v4\n"), tmp_path)] == [
        j.job_id for j in expand(_manifest("model: tiny\n"), tmp_path)
    ]
    for model in ("smollm2-135m-instruct", "org/name", str(tmp_path)):
        assert {j.spec.model for j in expand(_manifest(f"model: {model}\n"), tmp_path)} == {model}


def test_an_older_tiny_recipe_is_refused_at_its_line(tmp_path):
    with pytest.raises(InputError) as err:
        _manifest("model: tiny-v1\n")
    assert "model" in str(err.value) and "tiny recipe v4" in str(err.value)


def test_expand_is_deterministic():
    text = "seeds: {count: 2}\norders: {random: 3, seed: 9}\n"
    assert [j.job_id for j in expand(_manifest(text))] == [j.job_id for j in expand(_manifest(text))]


def test_default_run_root_is_the_manifests():
    jobs = expand(_manifest("run_root: elsewhere\n"))
    assert jobs[0].run_dir == Path("elsewhere") / "st" / jobs[0].job_id


def test_duplicate_specs_collapse():
    conditions = "[A, A, {condition: A}, B]"
    jobs = expand(_manifest("seeds: [0, 0]\norders: [[care-appointments], [care-appointments]]\n", conditions))
    assert [j.spec.condition for j in jobs] == ["A", "B"]


def test_study_name_is_not_in_the_job_id():
    a = expand(parse_manifest("study: one\nconditions: [A]\n"))
    b = expand(parse_manifest("study: two\nconditions: [A]\n"))
    assert [j.job_id for j in a] == [j.job_id for j in b]
    assert a[0].run_dir.parent.name == "one" and b[0].run_dir.parent.name == "two"


def test_arms_of_condition_objects():
    m = _manifest(conditions="[{condition: last-k, k: 2}, {condition: A, token_budget: {match: B}}]")
    arms = sorted({j.spec.arm for j in expand(m)})
    assert arms == ["A@B", "last-2"]
