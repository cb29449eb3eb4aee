"""Manifest -> jobs: every (arm, seed, order) of a study as a JobSpec with its run directory.

Deterministic: the same manifest (and data) always gives the same jobs in the same
order, and equal specs collapse to one job (one id, one directory). The only I/O is
hashing the files of a hub data source (``data.source``), whose fingerprint is part of
every job's spec.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from trajhpc.data.blocks import block_names
from trajhpc.data.source import SourceError, pin_fingerprint
from trajhpc.spec import DataSpec, EvalSpec, JobSpec, versioned_model
from trajhpc.study.manifest import ConditionEntry, Manifest, RandomOrders, SeedRange

Order = tuple[str, ...]


@dataclass(frozen=True)
class GridJob:
    """One job of a study: its spec, id and run directory ``<run_root>/<study>/<job_id>/``."""

    spec: JobSpec
    job_id: str
    study: str
    run_dir: Path


# ---------------------------------------------------------------- orders


def latin_orders(blocks: Sequence[str]) -> list[Order]:
    """n cyclic shifts of the partition order: each block once in each position (a Latin square)."""
    n = len(blocks)
    return [tuple(blocks[(start + i) % n] for i in range(n)) for start in range(n)]


def all_orders(blocks: Sequence[str]) -> list[Order]:
    """Every permutation (n! orders), the partition order first."""
    return [tuple(p) for p in itertools.permutations(blocks)]


def _nth_permutation(blocks: Sequence[str], index: int) -> Order:
    """The ``index``-th permutation in lexicographic order of positions (Lehmer code)."""
    pool, out = list(blocks), []
    for size in range(len(pool), 0, -1):
        position, index = divmod(index, math.factorial(size - 1))
        out.append(pool.pop(position))
    return tuple(out)


def random_orders(blocks: Sequence[str], k: int, seed: int) -> list[Order]:
    """``k`` distinct random permutations, the same for the same (blocks, k, seed).

    Raises ValueError when k exceeds n!.
    """
    total = math.factorial(len(blocks))
    if k > total:
        raise ValueError(f"asks for {k} distinct orders but {len(blocks)} blocks have only {total}")
    # Sampling permutation indexes without replacement keeps them distinct without retries.
    return [_nth_permutation(blocks, i) for i in random.Random(seed).sample(range(total), k)]


def resolve_orders(manifest: Manifest, blocks: Sequence[str]) -> list[Order]:
    """The manifest's ``orders`` as explicit block tuples; bad block names -> InputError with the line."""
    spec = manifest.orders
    if spec == "latin":
        return latin_orders(blocks)
    if spec == "all":
        return all_orders(blocks)
    if isinstance(spec, RandomOrders):
        try:
            return random_orders(blocks, spec.random, spec.seed)
        except ValueError as err:
            raise manifest.error("orders.random", str(err)) from None
    known = set(blocks)
    for i, order in enumerate(spec):
        for j, block in enumerate(order):
            if block not in known:
                raise manifest.error(f"orders.{i}.{j}", f"unknown block {block!r}; blocks: {', '.join(blocks)}")
            if block in order[:j]:
                raise manifest.error(f"orders.{i}.{j}", f"block {block!r} appears twice in this order")
    return [tuple(order) for order in spec]


# ---------------------------------------------------------------- seeds and arms


def resolve_seeds(manifest: Manifest) -> list[int]:
    """Seeds in manifest order, duplicates dropped."""
    seeds = manifest.seeds
    if isinstance(seeds, SeedRange):
        return list(range(seeds.start, seeds.start + seeds.count))
    return list(dict.fromkeys(seeds))


def arm_fields(item: str | ConditionEntry) -> dict[str, Any]:
    """JobSpec fields of one ``conditions`` entry."""
    if isinstance(item, str):
        return {"condition": item}
    return {"condition": item.condition, "condition_k": item.k, "token_budget": item.token_budget}


def arm_eval(shared: EvalSpec, condition: str) -> EvalSpec:
    """The manifest's ``eval`` as one arm's jobs hold it: ``also_under`` without the arm's own
    condition (every arm is evaluated under its own anyway), so e.g. ``also_under: [B]`` leaves
    the B arm's job ids as they were."""
    if condition not in shared.also_under:
        return shared
    return shared.model_copy(update={"also_under": tuple(c for c in shared.also_under if c != condition)})


# ---------------------------------------------------------------- the grid


def grid_size(manifest: Manifest, n_blocks: int) -> dict[str, int]:
    """How many arms, seeds and orders the manifest asks for, counted without listing any."""
    spec = manifest.orders
    if spec == "latin":
        orders = n_blocks
    elif spec == "all":
        orders = math.factorial(n_blocks)
    elif isinstance(spec, RandomOrders):
        orders = spec.random
    else:
        orders = len(spec)
    seeds = manifest.seeds.count if isinstance(manifest.seeds, SeedRange) else len(manifest.seeds)
    return {"conditions": len(manifest.conditions), "seeds": seeds, "orders": orders}


def check_grid_size(manifest: Manifest, n_blocks: int) -> None:
    """Refuse a grid larger than ``max_jobs`` before building any of it (a typo such as
    ``count: 10_000_000`` would otherwise spend minutes and gigabytes first)."""
    sizes = grid_size(manifest, n_blocks)
    total = math.prod(sizes.values())
    if total > manifest.max_jobs:
        # Point at the biggest factor the file sets (a default has no line to show).
        largest = max(sizes, key=lambda k: (manifest.written(k), sizes[k]))
        raise manifest.error(
            largest,
            f"the grid is {_count(sizes['conditions'])} arms x {_count(sizes['seeds'])} seeds x "
            f"{_count(sizes['orders'])} orders = {_count(total)} jobs, more than max_jobs ({manifest.max_jobs:,}); "
            "set max_jobs higher if you mean it",
        )


def _count(n: int) -> str:
    # n! of many blocks has dozens of digits: a short form is enough to see the problem.
    return f"{n:,}" if n < 10**15 else f"about {float(n):.1e}" if n < 10**300 else f"a {len(str(n))}-digit number"


def pinned_data(manifest: Manifest) -> DataSpec:
    """The manifest's ``data`` as every job's spec holds it: with the fingerprint of a hub
    source's files (``trajhpc.data.source``), so job ids follow the data's contents. Data
    that is not in the local cache is an InputError at the manifest's line."""
    try:
        return pin_fingerprint(manifest.data)
    except SourceError as err:
        raise manifest.error(err.field, err.message) from None


def expand(manifest: Manifest, run_root: str | Path | None = None) -> list[GridJob]:
    """All jobs of the manifest: arms x seeds x orders, in that nesting, duplicates collapsed.

    ``run_root`` overrides the manifest's ``run_root``.
    """
    blocks = block_names(manifest.data.blocks)
    check_grid_size(manifest, len(blocks))
    orders = resolve_orders(manifest, blocks)
    study_dir = Path(run_root if run_root is not None else manifest.run_root) / manifest.study
    pinned = pinned_data(manifest)
    shared = {
        "model": versioned_model(manifest.model),  # tiny -> tiny-v3: a rebuilt tiny model gets new job ids
        "quantization": manifest.quantization,
        "compute_dtype": manifest.compute_dtype,
        "data": pinned,
        "lora": manifest.lora,
        "train": manifest.train,
        "eval": manifest.eval,
    }
    jobs: dict[str, GridJob] = {}
    eval_of = [arm_eval(manifest.eval, arm_fields(item)["condition"]) for item in manifest.conditions]
    for i, item in enumerate(manifest.conditions):
        arm = arm_fields(item)
        for seed in resolve_seeds(manifest):
            for order in orders:
                data = pinned
                if isinstance(item, ConditionEntry) and item.tool_docs is not None:
                    data = data.model_copy(update={"tool_docs": item.tool_docs})
                spec = JobSpec(seed=seed, order=order, **arm, **{**shared, "data": data, "eval": eval_of[i]})
                job_id = spec.job_id
                if job_id not in jobs:
                    jobs[job_id] = GridJob(spec, job_id, manifest.study, study_dir / job_id)
    return list(jobs.values())
