"""Example-level statistics: every unit (seed x order) is scored on the same held-out items.

Unit-level statistics (trajhpc.results.stats) treat each job's accuracy as one number and so
ignore test-set sampling: with 208 items, a binomial standard error near 3.5 points at
50% is invisible to them. These functions use the items:

* :func:`item_test` — the item-level test a report leads with. Each item's paired
  difference is averaged over the units first, so units that repeat the same predictions
  add nothing; the test flips the sign of whole dialogues (:func:`cluster_sign_flip`,
  items of one dialogue are correlated) and the CI resamples dialogues
  (:func:`cluster_bootstrap`). It asks whether the difference holds across held-out
  dialogues for these trained models; whether it holds across seeds is the unit-level test's.
* :func:`mcnemar_exact` — two arms on the same items within one unit: under H0 each
  discordant item is equally likely to favour either arm, so the count favouring arm 1
  is Binomial(b + c, 1/2); two-sided exact p (scipy's ``binomtest``).
* :func:`stratified_mcnemar` — the same over several units (strata): conditional on each
  unit's discordant count, the per-unit counts are independent binomials, so their sum
  is Binomial(sum of discordant, 1/2). Every unit is scored on the same items, so this
  counts an item once per unit: it holds only conditional on the units, and repeating a
  unit's predictions shrinks its p. Reported as ``mcnemar-conditional-on-units``, never first.
* :func:`two_level_bootstrap` — percentile CI of a mean accuracy (or a paired
  difference) resampling units and held-out dialogues (all items of a dialogue together).
* :func:`holm` — Holm's step-down adjustment over a family of p-values.

scipy is imported inside the functions: it costs most of a second, which only the
aggregate should pay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

RESAMPLES = 2_000
SEED = 0
LEVEL = 0.95
DRAWS = 10_000  # Monte-Carlo sign patterns of the item test, as the unit-level sign-flip
MAX_EXACT_CLUSTERS = 16  # all 2^n sign patterns of the dialogues enumerated up to this many
_CHUNK_CELLS = 1_000_000  # resample-matrix cells per chunk of the two-level bootstrap (~8 MB)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p: ``b`` items right only under arm 1, ``c`` only under arm 2."""
    from scipy.stats import binomtest

    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    # For p = 1/2 binomtest's two-sided p (outcomes no likelier than k) is twice the smaller tail.
    return float(binomtest(b, b + c).pvalue) if b + c else 1.0


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
    """Holm step-down adjusted p-values, statsmodels' ``multipletests(method="holm")``; None stays
    None and is not counted in the family."""
    present = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted: list[float | None] = [None] * len(pvalues)
    if present:
        # Imported here, and only for a family that has p-values: it loads pandas and scipy.stats
        # (most of a second), which a study without secondary comparisons never needs.
        from statsmodels.stats.multitest import multipletests

        _, corrected, _, _ = multipletests([pvalues[i] for i in present], method="holm")
        for i, q in zip(present, corrected):
            adjusted[i] = float(q)
    return adjusted


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
    # A draw's total is sum over drawn units and dialogues of sums[unit, dialogue]: the units' counts
    # times sums times the dialogues' counts. The counts come from the generator draw by draw (the
    # same values in the same order as ever); the products run a chunk of draws at a time.
    chunk = max(1, min(resamples, _CHUNK_CELLS // max(n_units, n_groups)))
    unit_counts, group_counts = np.empty((chunk, n_units)), np.empty((chunk, n_groups))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        for r in range(rows):
            unit_counts[r] = np.bincount(rng.integers(0, n_units, n_units), minlength=n_units)
            group_counts[r] = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
        u, g = unit_counts[:rows], group_counts[:rows]
        draws[start : start + rows] = ((u @ sums) * g).sum(axis=1) / (n_units * (g @ counts))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return BootstrapCI(float(scores.mean()), float(low), float(high), resamples)


def cluster_sign_flip(
    sums: np.ndarray, *, draws: int = DRAWS, seed: int = SEED, max_exact: int = MAX_EXACT_CLUSTERS
) -> tuple[float, bool]:
    """Two-sided sign-flip p that a paired mean difference is zero, flipping whole clusters.

    ``sums`` holds each cluster's summed difference. Under H0 a cluster's items favour
    either arm alike, so its sum is as likely negated; the statistic is the total (the
    mean times a fixed item count). A cluster summing to zero totals the same under either
    sign, so it is dropped: the exact p is unchanged (every pattern of the others repeats
    equally often) and the choice below counts only clusters that matter. All 2^n patterns
    are enumerated up to ``max_exact`` such clusters (exact=True), else ``draws`` random
    ones (scipy: twice the smaller tail's (1 + hits) / (1 + draws), at most 1). Returns
    (p, exact); p is NaN without clusters.
    """
    from scipy.stats import permutation_test

    s = np.asarray(sums, dtype=float)
    if s.size == 0:
        return float("nan"), True
    s = s[s != 0]
    if s.size <= 1:  # both signs of one cluster (or of none) reach the observed |total|
        return 1.0, True
    exact = s.size <= max_exact
    # scipy enumerates when n_resamples >= 2^n, so Monte Carlo stays below that.
    n_resamples = 2**s.size if exact else min(draws, 2**s.size - 1)
    res = permutation_test(
        (s,), lambda x, axis: x.sum(axis=axis), permutation_type="samples", vectorized=True,
        n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed),
    )
    return float(res.pvalue), exact


def cluster_bootstrap(
    sums: np.ndarray, counts: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float] | None:
    """Percentile CI of a mean over items, resampling clusters (each its sum and item count).

    A draw takes clusters with replacement and divides their summed values by their
    summed item counts. None below two clusters: one dialogue says nothing of the others.
    """
    from scipy.stats import bootstrap

    s, n = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    if s.size < 2:
        return None
    res = bootstrap(
        (s, n), lambda a, b, axis=-1: a.sum(axis=axis) / b.sum(axis=axis), paired=True, vectorized=True,
        n_resamples=resamples, method="percentile", confidence_level=level, rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class ItemTest:
    """:func:`item_test`'s result: mean paired difference, CI, p and how p was reached."""

    mean: float
    low: float | None
    high: float | None
    p: float
    exact: bool
    draws: int | None  # Monte-Carlo sign patterns; None when all were enumerated
    clusters: int


def item_test(
    diffs: np.ndarray,
    groups: Sequence[str | int],
    *,
    draws: int = DRAWS,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> ItemTest:
    """Item-level test of ``diffs`` (units x items, arm minus baseline) that repeated units cannot strengthen.

    Each item's difference is averaged over the units, then :func:`cluster_sign_flip` and
    :func:`cluster_bootstrap` run over the clusters ``groups`` (one label per item, the
    dialogue). Copies of a unit leave every item's average, and so the result, unchanged.
    """
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or d.shape[1] != len(groups) or d.size == 0:
        raise ValueError(f"diffs must be units x items with one group per item, got {d.shape}, {len(groups)}")
    labels, group_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    # Cluster sums of per-item sums over units: integers for 0/1 scores, so sign patterns that
    # tie in exact arithmetic tie in floats too; dividing by the unit count k comes last.
    k = d.shape[0]
    sums = np.bincount(group_of, weights=d.sum(axis=0), minlength=len(labels))
    counts = np.bincount(group_of, minlength=len(labels))
    p, exact = cluster_sign_flip(sums, draws=draws, seed=seed)
    ci = cluster_bootstrap(sums / k, counts, resamples=resamples, seed=seed, level=level)
    low, high = ci if ci else (None, None)
    n_draws = None if exact else min(draws, 2 ** int(np.count_nonzero(sums)) - 1)
    return ItemTest(float(sums.sum() / (counts.sum() * k)), low, high, p, exact, n_draws, len(labels))
