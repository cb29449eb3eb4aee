"""Example-level statistics against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from trajhpc.results.itemstats import (
    cluster_bootstrap,
    cluster_sign_flip,
    discordant,
    holm,
    item_test,
    mcnemar_exact,
    stratified_mcnemar,
    two_level_bootstrap,
)
from trajhpc.results.stats import sign_flip_pvalue, smallest_sign_flip_p


@pytest.mark.parametrize(
    "b, c, p",
    [(0, 5, 2 / 32), (1, 9, 22 / 1024), (9, 1, 22 / 1024), (5, 5, 1.0), (0, 0, 1.0), (0, 1, 1.0)],
)
def test_mcnemar_exact(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_mcnemar_exact_is_the_two_sided_binomial_tail_by_hand():
    """scipy's binomtest gives what the textbook formula gives: twice the smaller tail, at most 1."""
    for b, c in itertools.product(range(0, 25, 3), range(0, 31, 4)):
        n, low = b + c, min(b, c)
        by_hand = min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / 2**n) if n else 1.0
        assert mcnemar_exact(b, c) == pytest.approx(by_hand, rel=1e-12), (b, c)


def test_discordant_counts_and_shape_check():
    x = np.array([1, 1, 0, 0, 1], bool)
    y = np.array([1, 0, 1, 0, 0], bool)
    assert discordant(x, y) == (2, 1)
    with pytest.raises(ValueError, match="different items"):
        discordant(x, y[:3])


def test_stratified_mcnemar_pools_the_discordant_counts_of_the_units():
    assert stratified_mcnemar([(1, 4), (0, 5)]) == pytest.approx(22 / 1024)
    assert stratified_mcnemar([]) == 1.0


def test_holm_on_a_known_family():
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_holm_is_the_textbook_step_down_on_random_families():
    """statsmodels' Holm against Holm (1979) written out: sort, multiply by (m - rank), keep monotone."""
    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 30):
        p = rng.uniform(0, 0.2, m).tolist()
        order = sorted(range(m), key=lambda i: p[i])
        expected, running = [0.0] * m, 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            expected[i] = running
        assert holm(p) == pytest.approx(expected)


def test_smallest_sign_flip_p_is_the_floor_of_the_test_the_aggregate_runs():
    assert smallest_sign_flip_p(4) == 0.125 and smallest_sign_flip_p(1) == 1.0 and smallest_sign_flip_p(0) == 1.0
    assert smallest_sign_flip_p(16) == pytest.approx(2 / 2**16)
    # Past 2^16 patterns the test draws 10,000 of them: no p below 1/10,001, however many pairs.
    assert smallest_sign_flip_p(20) == pytest.approx(1 / 10_001)
    for n in (4, 16, 17, 20):
        p, _ = sign_flip_pvalue(np.ones(n))
        assert p == pytest.approx(smallest_sign_flip_p(n))
    # 1,024 pairs and more: 2.0 ** n overflowed here once (issue 22 item 19).
    assert smallest_sign_flip_p(1_024) == smallest_sign_flip_p(100_000) == pytest.approx(1 / 10_001)


def test_two_level_bootstrap_includes_test_set_sampling():
    rng = np.random.default_rng(1)
    items = rng.random(60) < 0.5
    one_unit = items[None, :].astype(float)
    groups = [i // 2 for i in range(60)]  # 30 dialogues of 2 items
    ci = two_level_bootstrap(one_unit, groups, resamples=500)
    assert ci.mean == pytest.approx(items.mean())
    # One unit: a unit-level bootstrap has zero width; resampling dialogues does not.
    assert ci.low < ci.mean < ci.high and ci.high - ci.low > 0.15
    assert two_level_bootstrap(one_unit, groups, resamples=500) == ci  # seeded
    flat = two_level_bootstrap(np.ones((3, 10)), list(range(10)), resamples=100)
    assert (flat.low, flat.high) == (1.0, 1.0)
    with pytest.raises(ValueError):
        two_level_bootstrap(np.ones((2, 3)), [0, 1])


def test_cluster_sign_flip_of_three_dialogues_by_hand():
    # Totals of the 8 sign patterns of (3, 1, 2): ±6, ±4, ±2, 0, 0; two reach |6|.
    assert cluster_sign_flip(np.array([3.0, 1.0, 2.0])) == (0.25, True)
    # A dialogue summing to zero changes no total: same p, still exact.
    assert cluster_sign_flip(np.array([3.0, 0.0, 1.0, 2.0, 0.0])) == (0.25, True)
    assert cluster_sign_flip(np.zeros(4)) == (1.0, True)
    assert cluster_sign_flip(np.array([0.0, -2.0, 0.0])) == (1.0, True)  # one dialogue differs: ±2, both reach 2
    p, exact = cluster_sign_flip(np.arange(1.0, 21.0), draws=2_000)  # 20 clusters: Monte Carlo
    assert not exact and p == pytest.approx(2 / 2_001)  # no draw reaches either tail: 2 x 1/(1 + draws)
    assert cluster_sign_flip(np.arange(1.0, 21.0), draws=2_000) == (p, exact)  # seeded


@pytest.mark.parametrize("n", [5, 9, 12])
def test_cluster_sign_flip_of_single_item_clusters_is_the_unit_sign_flip(n):
    """Unclustered, the test is the plain sign-flip (trajhpc.results.stats, numpy) on the same values."""
    values = np.random.default_rng(n).integers(-3, 4, n).astype(float)
    values[values == 0] = 1.0  # nonzero: every cluster flips
    assert cluster_sign_flip(values)[0] == pytest.approx(float(sign_flip_pvalue(values)[0]), rel=1e-12)


def test_cluster_bootstrap_matches_the_two_level_bootstrap_of_one_unit():
    """Resampling dialogues of one unit: scipy's paired bootstrap and the numpy one agree up to Monte-Carlo error."""
    rng = np.random.default_rng(3)
    scores = (rng.random(120) < 0.4).astype(float)
    groups = np.repeat(np.arange(40), 3)
    sums, counts = np.bincount(groups, weights=scores), np.bincount(groups)
    lo, hi = cluster_bootstrap(sums, counts, resamples=4_000)
    ref = two_level_bootstrap(scores[None, :], groups.tolist(), resamples=4_000)
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    assert lo < scores.mean() < hi
    assert cluster_bootstrap(sums[:1], counts[:1]) is None  # one dialogue: no CI


def test_item_test_averages_items_over_units_then_flips_dialogues():
    # 2 units x 6 items in dialogues x, x, x, y, z, z: per-dialogue totals over units 6, 0, 3.
    diffs = np.array([[1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 1, 1]], float)
    t = item_test(diffs, ["x", "x", "x", "y", "z", "z"])
    assert t.mean == 9 / 12 and (t.p, t.exact, t.draws, t.clusters) == (0.5, True, None, 3)  # ±6 ±3: 2 of 4 reach 9
    assert t.low <= t.mean <= t.high
    with pytest.raises(ValueError):
        item_test(diffs, ["x"])


def test_repeating_a_unit_changes_the_item_test_not_at_all_but_shrinks_the_pooled_mcnemar():
    """The smoke study's case: the same 4 items discordant in each of 4 units."""
    one = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], float)
    groups = ["d1", "d2", "d3", "d4", "d1", "d2", "d3", "d4"]
    single, repeated = item_test(one, groups), item_test(np.repeat(one, 4, axis=0), groups)
    assert single == repeated and single.p == 2 / 16 and single.exact
    assert stratified_mcnemar([(4, 0)]) == 0.125
    assert stratified_mcnemar([(4, 0)] * 4) == pytest.approx(2 / 2**16)  # 3e-5: four copies, no new evidence


def test_item_test_of_many_dialogues_is_monte_carlo_and_seeded():
    rng = np.random.default_rng(0)
    diffs = (rng.random((3, 90)) < 0.5).astype(float) - (rng.random((3, 90)) < 0.4)
    groups = np.repeat(np.arange(30), 3).tolist()
    t = item_test(diffs, groups, draws=999)
    assert not t.exact and t.draws == 999 and t.clusters == 30
    assert item_test(diffs, groups, draws=999) == t
    assert item_test(np.vstack([diffs, diffs]), groups, draws=999) == t


def test_two_level_bootstrap_equals_its_plain_loop(monkeypatch):
    """The chunked products give each draw what the plain loop (units drawn, dialogues counted, summed
    draw by draw from the same generator) gives it, at sizes that span several chunks."""
    from trajhpc.results import itemstats

    monkeypatch.setattr(itemstats, "_CHUNK_CELLS", 1_000)  # 1 to 142 draws per chunk below
    rng = np.random.default_rng(7)
    for n_units, n_items, n_groups, resamples in ((1, 12, 4, 300), (7, 30, 9, 500), (600, 40, 13, 400)):
        scores = rng.random((n_units, n_items)).round(1) - 0.4
        groups = [f"d{i % n_groups}" for i in range(n_items)]
        labels, group_of = np.unique(np.asarray(groups), return_inverse=True)
        sums = np.zeros((n_units, len(labels)))
        np.add.at(sums.T, group_of, scores.T)
        counts = np.bincount(group_of).astype(float)
        plain, draws = np.random.default_rng(3), np.empty(resamples)
        for r in range(resamples):
            units = plain.integers(0, n_units, n_units)
            picked = np.bincount(plain.integers(0, n_groups, n_groups), minlength=n_groups).astype(float)
            draws[r] = (sums[units] @ picked).sum() / (n_units * (counts @ picked))
        low, high = np.quantile(draws, [0.025, 0.975])
        ci = two_level_bootstrap(scores, groups, resamples=resamples, seed=3)
        assert (ci.low, ci.high) == pytest.approx((low, high), abs=1e-12)
