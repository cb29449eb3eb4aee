"""Statistics: bootstrap CIs, sign-flip tests, continual-learning metrics, interpolation at a budget."""

import itertools

import numpy as np
import polars as pl
import pytest

from trajhpc.results import continual, stats

SAMPLE = [0.1, 0.4, 0.35, 0.8, 0.5]


def _loop_bootstrap(values, resamples=10_000, seed=0):
    """The definition, written as a plain loop: resample b takes rows floor(U * n)."""
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = [x[(rng.random(len(x)) * len(x)).astype(int)].mean() for _ in range(resamples)]
    return np.percentile(means, [2.5, 97.5])


def test_bootstrap_ci_matches_the_plain_loop_and_recorded_values():
    lo, hi = stats.bootstrap_ci(SAMPLE)
    ref = _loop_bootstrap(SAMPLE)
    assert lo == pytest.approx(ref[0], abs=1e-12) and hi == pytest.approx(ref[1], abs=1e-12)
    # Recorded once verified against the loop above: a change in the resampling shows here.
    assert (lo, hi) == pytest.approx((0.24, 0.64), abs=1e-12)
    assert stats.bootstrap_ci([0.2, 0.25, 0.5, 0.3]).tolist() == pytest.approx([0.225, 0.4375], abs=1e-12)


def test_bootstrap_is_deterministic_and_seeded():
    assert stats.bootstrap_ci(SAMPLE).tolist() == stats.bootstrap_ci(SAMPLE).tolist()
    assert stats.bootstrap_ci(SAMPLE, seed=1).tolist() != stats.bootstrap_ci(SAMPLE).tolist()


def test_bootstrap_columns_equal_single_columns_and_chunking_does_not_matter(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.random((37, 3))
    together = stats.bootstrap_ci(x, resamples=2_000)
    for j in range(3):
        assert together[j].tolist() == pytest.approx(stats.bootstrap_ci(x[:, j], resamples=2_000).tolist(), abs=1e-12)
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 37 * 7)  # 7 resamples per chunk
    np.testing.assert_allclose(stats.bootstrap_ci(x, resamples=2_000), together, rtol=0, atol=1e-12)


def test_bootstrap_ci_of_a_large_sample_is_near_the_normal_interval():
    x = np.random.default_rng(3).normal(0.5, 0.1, 2_000)
    lo, hi = stats.bootstrap_ci(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_describe_skips_missing_values_and_gives_no_ci_below_two():
    e = stats.describe([0.1, None, 0.35, float("nan"), 0.4, 0.8, 0.5])
    assert e.n == 5 and e.mean == pytest.approx(np.mean(SAMPLE))
    assert e.sd == pytest.approx(np.std(SAMPLE, ddof=1))
    assert (e.lo, e.hi) == pytest.approx((0.24, 0.64), abs=1e-12)  # same as the sample without gaps
    one = stats.describe([0.3])
    assert (one.mean, one.sd, one.lo, one.hi, one.n) == (0.3, None, None, None, 1)
    none = stats.describe([None])
    assert (none.mean, none.n) == (None, 0)


def test_describe_columns_groups_missing_patterns():
    x = np.array([[0.1, 0.1], [0.4, np.nan], [0.35, 0.35], [0.8, 0.8], [0.5, 0.5]])
    a, b = stats.describe_columns(x)
    assert a.n == 5 and b.n == 4
    assert (b.lo, b.hi) == pytest.approx(tuple(_loop_bootstrap([0.1, 0.35, 0.8, 0.5])), abs=1e-12)


def _enumerated_p(d):
    """Two-sided sign-flip p-value by brute-force enumeration."""
    d = np.asarray(d, dtype=float)
    observed = abs(d.mean())
    hits = sum(abs(np.mean(np.array(s) * d)) >= observed - 1e-12 for s in itertools.product([-1, 1], repeat=len(d)))
    return hits / 2 ** len(d)


def test_sign_flip_exact_on_hand_enumerable_cases():
    assert stats.sign_flip_pvalue([0.1, 0.2, 0.3]) == (0.25, True)  # only all+ and all- reach |mean|
    assert stats.sign_flip_pvalue([1.0, 2.0, -0.5]) == (0.5, True)  # sums ±3.5 and ±2.5 of 8 patterns
    assert stats.sign_flip_pvalue([1.0, -1.0]) == (1.0, True)
    assert stats.sign_flip_pvalue([0.0, 0.0, 0.0]) == (1.0, True)
    d = np.random.default_rng(2).normal(0.1, 0.2, 9)
    assert stats.sign_flip_pvalue(d)[0] == pytest.approx(_enumerated_p(d))


def test_sign_flip_monte_carlo_beyond_the_exact_limit():
    d = np.random.default_rng(4).normal(0.05, 0.2, 12)
    exact_p, exact = stats.sign_flip_pvalue(d)
    mc_p, mc = stats.sign_flip_pvalue(d, max_exact=1_000)  # 2^12 > 1000: sampled
    assert exact and not mc
    assert mc_p == pytest.approx(exact_p, abs=0.02)
    assert mc_p == stats.sign_flip_pvalue(d, max_exact=1_000)[0]  # fixed seed
    assert stats.sign_flip_pvalue([0.1] * 20) == (pytest.approx(1 / 10_001), False)  # 2^20 > 1e5


def test_sign_flip_columns_handles_missing_pairs():
    d = np.array([[0.1, 0.1], [0.2, np.nan], [0.3, 0.3]])
    p, exact = stats.sign_flip_columns(d)
    assert p == [0.25, 0.5] and exact == [True, True]
    assert stats.sign_flip_columns(np.full((2, 1), np.nan)) == ([None], [True])


# Hand-made matrix, order a > b > c, plus block d that is never trained.
#            a     b     c     d
R = [
    [0.10, 0.20, 0.00, 0.00],  # stage 0 (zero-shot)
    [0.60, 0.30, 0.10, 0.10],  # after a
    [0.65, 0.70, 0.20, 0.10],  # after b
    [0.40, 0.50, 0.80, 0.20],  # after c
]


def _long(matrix, order=("a", "b", "c"), blocks=("a", "b", "c", "d"), job="j1"):
    rows = []
    for t, row in enumerate(matrix):
        for b, v in zip(blocks, row):
            pos = order.index(b) + 1 if b in order else None
            rows.append({"job_id": job, "stage": t, "n_stages": len(order), "block_pos": pos, "exact": v})
    schema = {"job_id": pl.String, "stage": pl.Int64, "n_stages": pl.Int64, "block_pos": pl.Int64, "exact": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def test_continual_metrics_on_a_hand_made_matrix():
    m = continual.continual_metrics(_long(R), "exact").row(0, named=True)
    assert m["acc"] == pytest.approx((0.40 + 0.50 + 0.80 + 0.20) / 4)  # all evaluated blocks
    assert m["bwt"] == pytest.approx(((0.40 - 0.60) + (0.50 - 0.70)) / 2)  # -0.2
    assert m["forgetting_since_learned"] == pytest.approx(((0.65 - 0.40) + (0.70 - 0.50)) / 2)  # 0.225: a peaked after b
    assert m["forgetting_chaudhry"] == m["forgetting_since_learned"]  # no block scored higher before it was trained
    assert m["fwt"] == pytest.approx(((0.30 - 0.20) + (0.20 - 0.00)) / 2)  # 0.15


def test_continual_metrics_per_unit_and_single_block_orders():
    other = [[0.0, 0.0], [0.9, 0.1]]
    long = pl.concat([_long(R), _long(other, order=("a",), blocks=("a", "b"), job="j2")])
    m = continual.continual_metrics(long, "exact")
    assert m["job_id"].to_list() == ["j1", "j2"]
    j2 = m.row(1, named=True)
    assert j2["acc"] == pytest.approx(0.5)
    metrics = ("bwt", "forgetting_chaudhry", "forgetting_since_learned", "fwt")
    assert [j2[k] for k in metrics] == [None] * 4  # T = 1: nothing to transfer


def test_continual_metrics_skip_missing_scores():
    r = [row[:] for row in R]
    r[1][0] = None  # R[1][a] unknown: BWT uses block b only
    m = continual.continual_metrics(_long(r), "exact").row(0, named=True)
    assert m["bwt"] == pytest.approx(0.50 - 0.70)
    assert m["forgetting_since_learned"] == pytest.approx(((0.65 - 0.40) + (0.70 - 0.50)) / 2)


# Four blocks, order a > b > c > d; b and c score higher before they are trained (transfer) than after.
#               a      b      c      d
R_TRANSFER = [
    [0.10, 0.99, 0.10, 0.10],  # stage 0: the untrained model, not a stage of either definition
    [0.60, 0.95, 0.20, 0.10],  # after a
    [0.50, 0.50, 0.875, 0.10],  # after b
    [0.40, 0.60, 0.70, 0.20],  # after c
    [0.30, 0.40, 0.30, 0.90],  # after d (T = 4)
]


def test_the_two_forgetting_definitions_differ_when_a_block_peaks_before_it_is_trained():
    long = _long(R_TRANSFER, order=("a", "b", "c", "d"), blocks=("a", "b", "c", "d"))
    m = continual.continual_metrics(long, "exact").row(0, named=True)
    # Chaudhry et al. (2018): max over stages 1..T-1, whenever the block was trained.
    assert m["forgetting_chaudhry"] == pytest.approx(((0.60 - 0.30) + (0.95 - 0.40) + (0.875 - 0.30)) / 3)
    assert m["forgetting_chaudhry"] == pytest.approx(0.475)
    # Since learned: max over the stages from the block's own on.
    assert m["forgetting_since_learned"] == pytest.approx(((0.60 - 0.30) + (0.60 - 0.40) + (0.70 - 0.30)) / 3)
    assert m["forgetting_since_learned"] == pytest.approx(0.300)


def _curve(points, budget, unit="u"):
    return pl.DataFrame(
        {
            "job_id": [unit] * len(points), "stage": list(range(len(points))), "tok": [p[0] for p in points],
            "acc": [p[1] for p in points], "budget": [budget] * len(points),
        },
        schema_overrides={"tok": pl.Float64, "budget": pl.Float64},
    )


@pytest.mark.parametrize(
    "budget, expected",
    [(175, 0.5 + 0.3 * 75 / 150), (100, 0.5), (250, 0.8), (0, 0.1), (50, 0.1 + 0.4 * 0.5), (300, None)],
)
def test_value_at_budget_interpolates_and_never_extrapolates(budget, expected):
    curve = _curve([(0, 0.1), (100, 0.5), (250, 0.8)], budget)
    value = stats.value_at_budget(curve, x="tok", y="acc", budget="budget")["value"].to_list()
    assert value == [pytest.approx(expected) if expected is not None else None]


def test_value_at_budget_per_unit_with_a_flat_segment():
    flat = _curve([(0, 0.1), (100, 0.5), (100, 0.6), (200, 0.9)], 100, "u1")
    curve = pl.concat([flat, _curve([(0, 0.2), (400, 0.6)], 100, "u2")])
    out = stats.value_at_budget(curve, x="tok", y="acc", budget="budget")
    assert out["job_id"].to_list() == ["u1", "u2"]
    assert out["value"].to_list() == [pytest.approx(0.5), pytest.approx(0.3)]  # first point reaching the budget


def test_describe_many_equals_separate_calls_and_handles_empty_samples():
    rng = np.random.default_rng(8)
    a, b, c = rng.random((30, 2)), rng.random((12, 3)), np.empty((0, 2))
    many = stats.describe_many([a, b, c], resamples=1_000)
    assert many[0] == stats.describe_columns(a, resamples=1_000)
    assert many[1] == stats.describe_columns(b, resamples=1_000)
    assert [e.n for e in many[2]] == [0, 0] and many[2][0].mean is None
    tests = stats.sign_flip_many([a[:5] - 0.5, c])
    assert tests[0] == stats.sign_flip_columns(a[:5] - 0.5) and tests[1] == ([None, None], [True, True])


def test_describe_and_flip_equals_the_separate_calls_bit_for_bit(monkeypatch):
    # One generator stream feeds every bootstrap size and every Monte Carlo sign-flip test
    # (stats._draw): each must still get exactly what a generator of its own would give it,
    # for samples of different sizes, with gaps, exact and sampled tests, and small chunks
    # (the consumers then take turns many times over a reused buffer).
    rng = np.random.default_rng(11)
    a = rng.random((40, 3))
    b = rng.random((37, 2))
    b[rng.random(b.shape) < 0.2] = np.nan
    d = rng.random((30, 2)) - 0.4
    d[3, 1] = np.nan
    small = rng.random((5, 2)) - 0.5  # 2^5 patterns: enumerated
    for cells in (stats._CHUNK_CELLS, 37 * 7):
        monkeypatch.setattr(stats, "_CHUNK_CELLS", cells)
        estimates, tests = stats.describe_and_flip([a, b], [d, small], resamples=1_500, seed=4)
        assert estimates == stats.describe_many([a, b, d, small], resamples=1_500, seed=4)
        assert tests == stats.sign_flip_many([d, small], resamples=1_500, seed=4)
        for j in range(3):  # and each column its own bootstrap, with its own generator (to the last bits
            # of the matrix product, which sums one column and three alike only to 1e-12)
            alone = stats.bootstrap_ci(a[:, j], resamples=1_500, seed=4).tolist()
            assert [estimates[0][j].lo, estimates[0][j].hi] == pytest.approx(alone, abs=1e-12)
        assert tests[0][0][0] == stats.sign_flip_pvalue(d[:, 0], resamples=1_500, seed=4)[0]
    assert stats.describe_and_flip([], []) == ([], [])


def test_the_shared_stream_gives_each_reader_its_own_generators_values():
    stream = stats._Uniforms(seed=2, largest_read=50)
    own = np.random.default_rng(2).random(400)
    assert stream.read(0, 30, keep_from=0).tolist() == own[:30].tolist()
    assert stream.read(0, 40, keep_from=0).tolist() == own[:40].tolist()  # a second reader, same start
    assert stream.read(30, 50, keep_from=30).tolist() == own[30:80].tolist()
    assert stream.read(40, 45, keep_from=40).tolist() == own[40:85].tolist()
    for start in range(85, 350, 45):  # the buffer (2 reads) is reused: values before keep_from move out
        assert stream.read(start, 45, keep_from=start).tolist() == own[start : start + 45].tolist()
