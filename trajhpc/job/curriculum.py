"""Which examples each training stage of a job trains on, by the spec's ``curriculum`` (pure).

* ``sequential`` (the study): stage k trains block ``order[k-1]``'s training examples.
* ``joint``: one stage on every block's training examples together, in the order's order
  (the retention upper bound: nothing learned earlier can be overwritten later).
* ``replay`` with share f: stage k trains block ``order[k-1]``'s n examples plus r examples
  drawn without replacement from all training examples of the blocks before it, with
  r = round(f * n / (1 - f)), so replayed examples are f of the stage's n + r examples
  (r is at most the earlier blocks' count; stage 1 has no earlier block and replays none).
  The draw is seeded by (seed, stage) and picks by position in each block's training list,
  so every arm of a unit with the same curriculum replays the same examples.

The stage's list then goes to the batch planner like a block's (trajhpc.job.recipe.block_batches).
"""

from __future__ import annotations

from typing import Mapping, Sequence, TypeVar

import numpy as np

from trajhpc.spec import JobSpec

T = TypeVar("T")
# Mixed into the replay draw's seed, so it never repeats a shuffle the batch planner draws from (seed, stage).
_REPLAY_STREAM = 0x5E9A7


def replay_count(own: int, fraction: float, pool: int) -> int:
    """How many earlier examples a replay stage of ``own`` block examples adds: the r with
    r / (own + r) nearest ``fraction``, at most ``pool`` (the earlier blocks' examples)."""
    return min(pool, round(fraction * own / (1.0 - fraction)))


def replay_draw(seed: int, stage: int, earlier: Sequence[int], own: int, fraction: float) -> list[tuple[int, int]]:
    """The (earlier block's position in the order, example's position in that block) pairs that stage
    ``stage`` replays, ``earlier`` being the training-example counts of the blocks before it; sorted."""
    pool = [(b, i) for b, n in enumerate(earlier) for i in range(n)]
    count = replay_count(own, fraction, len(pool))
    rng = np.random.default_rng([seed, stage, _REPLAY_STREAM])
    picks = rng.choice(len(pool), size=count, replace=False) if count else []
    return sorted(pool[int(p)] for p in picks)


def stage_examples(spec: JobSpec, examples: Mapping[str, Sequence[T]], stage: int) -> list[T]:
    """The examples training stage ``stage`` (1-based) trains on, from each block's training ``examples``."""
    if not 1 <= stage <= len(spec.stage_blocks):
        raise ValueError(f"stage {stage}: a {spec.curriculum} job has stages 1..{len(spec.stage_blocks)}")
    if spec.curriculum == "joint":
        return [e for block in spec.order for e in examples[block]]
    own = list(examples[spec.order[stage - 1]])
    if spec.curriculum == "sequential":
        return own
    earlier = spec.order[: stage - 1]
    draw = replay_draw(spec.seed, stage, [len(examples[b]) for b in earlier], len(own), spec.replay)
    return own + [examples[earlier[b]][i] for b, i in draw]
