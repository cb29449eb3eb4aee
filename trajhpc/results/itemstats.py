"""Example-level statistics: every unit (seed x order) is scored on the same held-out items.

Unit-level statistics (trajhpc.results.stats) treat each job's accuracy as one number and so
ignore test-set sampling: with 208 items, a binomial standard error near 3.5 points at
50% is invisible to them. These functions use the items:

* :func:`mcnemar_exact` — two arms on the same items within one unit: under H0 each
  discordant item is equally likely to favour either arm, so the count favouring arm 1
  is Binomial(b + c, 1/2); two-sided exact p.
* :func:`stratified_mcnemar` — the same over several units (strata): conditional on each
  unit's discordant count, the per-unit counts are independent binomials, so their sum
  is Binomial(sum of discordant, 1/2): an exact stratified test (the matched-pairs
  Cochran–Mantel–Haenszel test without its normal approximation). Items shared across
  units are treated as independent draws here; the two-level bootstrap does not.
* :func:`two_level_bootstrap` — percentile CI of a mean accuracy (or a paired
  difference) resampling units and held-out dialogues (all items of a dialogue together).
* :func:`holm` — Holm's step-down adjustment over a family of p-values.
* :func:`smallest_sign_flip_p` — the smallest two-sided p a sign-flip test over n pairs
  can reach (with 4 pairs it is 0.125: no result can be "significant").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 2_000
SEED = 0
LEVEL = 0.95


def _binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact p of k successes in n fair trials (twice the smaller tail, capped at 1)."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p: ``b`` items right only under arm 1, ``c`` only under arm 2."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    return _binomial_two_sided(b, b + c)


def discordant(x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """(items right under x only, items right under y only) for two boolean vectors over the same items."""
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    if x.shape != y.shape:
        raise ValueError(f"the two arms were scored on different items ({x.shape} vs {y.shape})")
    return int(np.sum(x & ~y)), int(np.sum(~x & y))


def stratified_mcnemar(pairs: Sequence[tuple[int, int]]) -> float:
    """Exact stratified McNemar p over units, each given as its (b, c) discordant counts."""
    b = sum(p[0] for p in pairs)
    return mcnemar_exact(b, sum(p[1] for p in pairs)) if pairs else 1.0


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (None stays None and is not counted in the family)."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def smallest_sign_flip_p(n_pairs: int) -> float:
    """Smallest two-sided p a sign-flip test over ``n_pairs`` pairs can give."""
    return min(1.0, 2.0 / 2.0**n_pairs) if n_pairs > 0 else 1.0


@dataclass(frozen=True)
class BootstrapCI:
    mean: float
    low: float
    high: float
    resamples: int


def two_level_bootstrap(
    scores: np.ndarray,
    groups: Sequence[str | int],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> BootstrapCI:
    """Percentile CI of the mean of ``scores`` (units x items) resampling units and item groups.

    Each draw takes units with replacement and held-out dialogues (``groups``, one label
    per item) with replacement, and averages every item of the drawn dialogues over the
    drawn units. For a paired difference pass ``arm1 - arm2`` (same units, same items).
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != len(groups) or scores.size == 0:
        raise ValueError(f"scores must be units x items with one group per item, got {scores.shape}, {len(groups)}")
    labels, group_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    # Per unit and dialogue: summed score and item count, so a draw is two small matrix sums.
    sums = np.zeros((scores.shape[0], len(labels)))
    np.add.at(sums.T, group_of, scores.T)
    counts = np.bincount(group_of, minlength=len(labels)).astype(float)
    rng = np.random.default_rng(seed)
    n_units, n_groups = scores.shape[0], len(labels)
    draws = np.empty(resamples)
    for r in range(resamples):
        units = rng.integers(0, n_units, n_units)
        picked = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(float)
        draws[r] = (sums[units] @ picked).sum() / (n_units * (counts @ picked))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return BootstrapCI(float(scores.mean()), float(low), float(high), resamples)
