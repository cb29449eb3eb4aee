"""Statistics for study comparisons: pure numpy/polars, deterministic.

* Uncertainty is a percentile bootstrap over independent units (one unit = one job,
  i.e. one seed x order), with a fixed generator seed so a rerun gives the same CI.
* Paired arm differences use a two-sided sign-flip permutation test, exact (all 2^n
  sign patterns) up to n = 16 pairs, Monte Carlo with a fixed seed beyond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import polars as pl

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
MAX_EXACT = 100_000  # enumerate all 2^n sign patterns up to this many
_CHUNK_CELLS = 1_000_000  # resample-matrix cells per chunk (~8 MB per buffer)


@dataclass(frozen=True)
class Estimate:
    """Mean, sample standard deviation (ddof=1) and bootstrap CI of one sample.

    ``sd`` is None below 2 values and the CI is None below 2 values too: a CI from
    one unit would look precise while saying nothing.
    """

    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None
    n: int


class _Uniforms:
    """The stream of ``default_rng(seed).random`` (one value per draw, so it does not depend on how it
    is cut into calls), read by several consumers, each at its own position.

    Bootstrap resamples of n units and Monte Carlo sign patterns over n pairs read the stream the same
    way, n values per resample: a study's samples of every size, and its paired tests, all start at
    the same values. Drawing them once for all of them saves a generator pass per sample size and per
    test; each consumer still sees exactly the values a generator of its own would give it.
    One buffer of twice the largest read is reused throughout (fresh allocations' page faults cost
    more than the maths).
    """

    def __init__(self, seed: int, largest_read: int):
        self._rng = np.random.default_rng(seed)
        self._store = np.empty(2 * largest_read)
        self._first = 0  # stream position of _store[0]
        self._end = 0  # stream position after the last value drawn

    def read(self, start: int, count: int, keep_from: int) -> np.ndarray:
        """Values [start, start + count) of the stream; those before ``keep_from`` (<= start) may go."""
        stop = start + count
        if stop > self._end:
            if stop - self._first > len(self._store):  # move the values still needed to the front
                live = self._end - keep_from
                self._store[:live] = self._store[keep_from - self._first : self._end - self._first]
                self._first = keep_from
            self._rng.random(out=self._store[self._end - self._first : stop - self._first])
            self._end = stop
        return self._store[start - self._first : stop - self._first]


class _Means:
    """Consumer: the means of bootstrap resamples of the rows of ``x`` (n, m), into ``out`` (resamples, m).

    Resample b draws row indices ``floor(U * n)`` from the stream's values [b n, (b + 1) n), so the
    result equals the plain loop ``x[(rng.random(n) * n).astype(int)].mean(0)``. Each chunk of
    resamples turns indices into counts (bincount, weighted by ones to count in floats directly)
    and multiplies by ``x``: one matrix product serves every column.
    """

    def __init__(self, x: np.ndarray, resamples: int):
        self.x, (self.n, _) = x, x.shape
        self.chunk = _chunk(self.n, resamples)
        self.out = np.empty((resamples, x.shape[1]))
        self._idx = np.empty((self.chunk, self.n), dtype=np.int64)
        self._offsets = (np.arange(self.chunk, dtype=np.int64) * self.n)[:, None]
        self._ones = np.ones(self.chunk * self.n)

    def take(self, u: np.ndarray, start: int) -> None:
        rows, n = u.shape
        ib = self._idx[:rows]
        # U * n in floats, cast to int on the way out (truncation = floor for non-negative values):
        # one pass, and the stream (shared) is never written to.
        np.multiply(u, n, out=ib, casting="unsafe")
        ib += self._offsets[:rows]
        counts = np.bincount(ib.ravel(), weights=self._ones[: rows * n], minlength=rows * n).reshape(rows, n)
        self.out[start : start + rows] = counts @ self.x / n


class _Flips:
    """Consumer: Monte Carlo sign patterns over the n pairs of ``d`` (n, m), counting per column the
    patterns whose |mean| reaches the observed one (sign +1 where the stream's U >= 0.5)."""

    def __init__(self, d: np.ndarray, resamples: int, observed: np.ndarray, tol: np.ndarray):
        self.d, (self.n, m) = d, d.shape
        self.chunk = _chunk(self.n, resamples)
        self.bar = observed - tol
        self.hits = np.zeros(m)

    def take(self, u: np.ndarray, start: int) -> None:
        signs = np.greater_equal(u, 0.5).astype(np.float64) * 2.0 - 1.0
        self.hits += (np.abs(signs @ self.d / self.n) >= self.bar).sum(axis=0)


def _chunk(n: int, resamples: int) -> int:
    """Resamples per chunk: about _CHUNK_CELLS values (the matrix products' shapes, and so their
    rounding, are those of every earlier version)."""
    return max(1, min(resamples, _CHUNK_CELLS // max(n, 1)))


def _draw(consumers: Sequence[_Means | _Flips], resamples: int, seed: int) -> None:
    """Feed every consumer its ``resamples`` rows of n values from one stream of ``default_rng(seed)``.

    The consumer furthest behind in the stream goes next, so all stay within one read of each
    other and the buffer holds at most two reads."""
    if not consumers:
        return
    stream = _Uniforms(seed, max(c.chunk * c.n for c in consumers))
    done = [0] * len(consumers)
    while True:
        active = [i for i, b in enumerate(done) if b < resamples]
        if not active:
            return
        i = min(active, key=lambda j: done[j] * consumers[j].n)
        c, start = consumers[i], done[i]
        rows = min(c.chunk, resamples - start)
        u = stream.read(start * c.n, rows * c.n, keep_from=start * c.n).reshape(rows, c.n)
        c.take(u, start)
        done[i] += rows


def _resample_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of the rows of ``x`` (n, m) -> (resamples, m) (:class:`_Means`)."""
    means = _Means(x, resamples)
    _draw([means], resamples, seed)
    return means.out


def _percentiles(means: np.ndarray, level: float) -> np.ndarray:
    """(m, 2) percentile CI of each column of the resampled means."""
    tail = (1.0 - level) / 2.0 * 100.0
    return np.percentile(means, [tail, 100.0 - tail], axis=0).T


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> np.ndarray:
    """Percentile bootstrap CI of the mean: (lo, hi) for a 1-D sample, (m, 2) for columns.

    Values must be finite; use :func:`describe_columns` for samples with gaps.
    """
    x = np.asarray(values, dtype=np.float64)
    flat = x.ndim == 1
    x2 = x[:, None] if flat else x
    if x2.shape[0] == 0:
        raise ValueError("bootstrap of an empty sample")
    ci = _percentiles(_resample_means(x2, resamples, seed), level)
    return ci[0] if flat else ci


def describe_columns(
    matrix: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> list[Estimate]:
    """One :class:`Estimate` per column of ``matrix`` (units x metrics), NaN = missing.

    A column's bootstrap depends only on its values (in row order), their count n and
    the seed: resample b draws the same positions ``floor(U * n)`` for every column
    with n values. So columns are grouped by n, whatever rows they miss, each
    compacted to its n values, and every group shares ONE set of resample indices:
    each column's CI equals what :func:`bootstrap_ci` gives on its own values.
    """
    consumers, finish = _describe_plan(matrix, resamples, level)
    _draw(consumers, resamples, seed)
    return finish()


def _describe_plan(
    matrix: np.ndarray, resamples: int, level: float
) -> tuple[list[_Means], Callable[[], list[Estimate]]]:
    """:func:`describe_columns` as (its bootstrap consumers, one per sample size, and what turns their
    means into the estimates once :func:`_draw` has fed them), so one stream can feed other work too."""
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError("describe_columns needs a 2-D array")
    result: list[Estimate | None] = [None] * x.shape[1]
    valid = ~np.isnan(x)
    counts = valid.sum(axis=0)
    groups = []
    for n in np.unique(counts).tolist():
        cols = np.flatnonzero(counts == n)
        if n == 0:
            for j in cols:
                result[j] = Estimate(None, None, None, None, 0)
            continue
        if n == x.shape[0]:  # no gaps
            sub = x[:, cols]
        else:
            sub = np.empty((n, len(cols)))
            for k, j in enumerate(cols):
                sub[:, k] = x[valid[:, j], j]
        groups.append((n, cols, sub, _Means(sub, resamples) if n > 1 else None))

    def finish() -> list[Estimate]:
        for n, cols, sub, boot in groups:
            means = sub.mean(axis=0)
            sds = sub.std(axis=0, ddof=1) if n > 1 else [None] * len(cols)
            ci = None if boot is None else _percentiles(boot.out, level)
            for k, j in enumerate(cols):
                result[j] = Estimate(
                    float(means[k]),
                    None if sds[k] is None else float(sds[k]),
                    None if ci is None else float(ci[k, 0]),
                    None if ci is None else float(ci[k, 1]),
                    n,
                )
        return result  # type: ignore[return-value]

    return [g[3] for g in groups if g[3] is not None], finish


def _stack(matrices: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """Side by side, shorter ones padded with NaN rows at the bottom; returns (stack, column offsets)."""
    mats = [np.asarray(m, dtype=np.float64) for m in matrices]
    mats = [m[:, None] if m.ndim == 1 else m for m in mats]
    rows = max((m.shape[0] for m in mats), default=0)
    padded = [np.vstack([m, np.full((rows - m.shape[0], m.shape[1]), np.nan)]) for m in mats]
    offsets = np.cumsum([0] + [m.shape[1] for m in mats]).tolist()
    return (np.hstack(padded) if padded else np.empty((0, 0))), offsets


def describe_many(matrices: Sequence[np.ndarray], **kwargs) -> list[list[Estimate]]:
    """:func:`describe_columns` of several samples at once (e.g. one per arm, and paired differences).

    A column's CI depends only on its own values, their count and the seed, so all
    samples of one size share one pass of resampling: stacking them changes no number
    and turns k bootstraps into one per distinct sample size.
    """
    stacked, offsets = _stack(matrices)
    est = describe_columns(stacked, **kwargs) if stacked.shape[1] else []
    return [est[a:b] for a, b in zip(offsets, offsets[1:])]


def describe(values: Sequence[float | None], **kwargs) -> Estimate:
    """:class:`Estimate` of one sample; None/NaN values are left out."""
    x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return describe_columns(x[:, None], **kwargs)[0]


def smallest_sign_flip_p(n: int) -> float:
    """The smallest two-sided p :func:`sign_flip_pvalue` can give over ``n`` pairs (all signs agreeing):
    2 / 2^n where it enumerates every pattern, 1 / (1 + RESAMPLES) where it draws them (with
    4 pairs it is 0.125: no result can be "significant"; past 16 pairs the draws set the floor)."""
    if n < 1:
        return 1.0
    if n < 63 and 2**n <= MAX_EXACT:
        return min(1.0, 2.0 / 2**n)
    return 1.0 / (1 + RESAMPLES)


def sign_flip_pvalue(
    diffs: Sequence[float] | np.ndarray, *, max_exact: int = MAX_EXACT, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[np.ndarray | float, bool]:
    """Two-sided paired sign-flip permutation p-value for a mean difference of zero.

    Under H0 each paired difference is symmetric about 0, so flipping its sign is as
    likely as not. p = share of sign patterns whose |mean| is at least the observed
    |mean|. All 2^n patterns are enumerated when 2^n <= ``max_exact`` (exact=True);
    otherwise ``resamples`` random patterns from ``default_rng(seed)`` give
    p = (1 + hits) / (1 + resamples). Works on a 1-D sample or on columns (n, m).
    Returns (p, exact); p is NaN for zero pairs.
    """
    d = np.asarray(diffs, dtype=np.float64)
    flat = d.ndim == 1
    flips, finish = _flip_plan(d[:, None] if flat else d, max_exact, resamples)
    _draw([flips] if flips is not None else [], resamples, seed)
    p, exact = finish()
    return (float(p[0]) if flat else p), exact


def _flip_plan(
    d2: np.ndarray, max_exact: int, resamples: int
) -> tuple[_Flips | None, Callable[[], tuple[np.ndarray, bool]]]:
    """:func:`sign_flip_pvalue` of the columns of ``d2`` as (its Monte Carlo consumer, None when the
    patterns are enumerated, and what gives (p, exact) once :func:`_draw` has fed it)."""
    n, m = d2.shape
    if n == 0:
        return None, lambda: (np.full(m, np.nan), True)
    observed = np.abs(d2.mean(axis=0))
    # Sums that are equal in exact arithmetic may differ in the last bits.
    tol = 1e-12 * np.maximum(1.0, observed)
    if n < 63 and 2**n <= max_exact:
        total = 2**n
        hits = np.zeros(m)
        chunk = max(1, _CHUNK_CELLS // n)
        for start in range(0, total, chunk):
            codes = np.arange(start, min(total, start + chunk), dtype=np.int64)
            signs = ((codes[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
            hits += (np.abs(signs @ d2 / n) >= observed - tol).sum(axis=0)
        return None, lambda: (hits / total, True)
    flips = _Flips(d2, resamples, observed, tol)
    return flips, lambda: ((1.0 + flips.hits) / (1.0 + resamples), False)


def sign_flip_many(matrices: Sequence[np.ndarray], **kwargs) -> list[tuple[list[float | None], list[bool]]]:
    """:func:`sign_flip_columns` of several paired samples, sharing sign patterns like :func:`describe_many`."""
    stacked, offsets = _stack(matrices)
    p, exact = sign_flip_columns(stacked, **kwargs) if stacked.shape[1] else ([], [])
    return [(p[a:b], exact[a:b]) for a, b in zip(offsets, offsets[1:])]


def sign_flip_columns(
    diffs: np.ndarray, *, max_exact: int = MAX_EXACT, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[list[float | None], list[bool]]:
    """:func:`sign_flip_pvalue` per column of (pairs x metrics), NaN = missing pair for that metric.

    Columns with the same missing pattern share one set of sign patterns. Returns
    (p-values, exact flags); p is None for a column without pairs.
    """
    consumers, finish = _flip_columns_plan(diffs, max_exact, resamples)
    _draw(consumers, resamples, seed)
    return finish()


def _flip_columns_plan(
    diffs: np.ndarray, max_exact: int, resamples: int
) -> tuple[list[_Flips], Callable[[], tuple[list[float | None], list[bool]]]]:
    """:func:`sign_flip_columns` as (its Monte Carlo consumers, what gives its result once fed)."""
    d = np.asarray(diffs, dtype=np.float64)
    valid = ~np.isnan(d)
    pvals: list[float | None] = [None] * d.shape[1]
    exact: list[bool] = [True] * d.shape[1]
    groups: dict[bytes, list[int]] = {}
    for j in range(d.shape[1]):
        groups.setdefault(valid[:, j].tobytes(), []).append(j)
    plans = []
    for cols in groups.values():
        rows = valid[:, cols[0]]
        if rows.any():
            plans.append((cols, *_flip_plan(d[rows][:, cols], max_exact, resamples)))

    def finish() -> tuple[list[float | None], list[bool]]:
        for cols, _, result in plans:
            p, ex = result()
            for k, j in enumerate(cols):
                pvals[j], exact[j] = float(p[k]), ex
        return pvals, exact

    return [flips for _, flips, _ in plans if flips is not None], finish


def describe_and_flip(
    samples: Sequence[np.ndarray], paired: Sequence[np.ndarray], *, resamples: int = RESAMPLES, seed: int = SEED,
    level: float = LEVEL,
) -> tuple[list[list[Estimate]], list[tuple[list[float | None], list[bool]]]]:
    """(:func:`describe_many` of ``samples`` and ``paired``, :func:`sign_flip_many` of ``paired``), the
    bootstraps and the Monte Carlo sign patterns all read from ONE pass over ``default_rng(seed)``:
    the same numbers as the separate calls, with the generator run once instead of once per sample
    size and per test."""
    every = [*samples, *paired]
    stacked, offsets = _stack(every)
    flip_stack, flip_offsets = _stack(paired)
    means, estimates = _describe_plan(stacked, resamples, level) if stacked.shape[1] else ([], list)
    flips, tests = _flip_columns_plan(flip_stack, MAX_EXACT, resamples) if flip_stack.shape[1] else ([], lambda: ([], []))
    _draw([*means, *flips], resamples, seed)
    est, (p, exact) = estimates(), tests()
    return ([est[a:b] for a, b in zip(offsets, offsets[1:])],
            [(p[a:b], exact[a:b]) for a, b in zip(flip_offsets, flip_offsets[1:])])


def value_at_budget(
    curve: pl.DataFrame, *, x: str, y: str, budget: str, unit: str = "job_id", order: str = "stage"
) -> pl.DataFrame:
    """Linear interpolation of ``y`` at ``x == budget`` along each unit's curve.

    ``curve`` has one row per unit x point, sorted within a unit by ``order`` with
    ``x`` non-decreasing (cumulative tokens; stage 0 at 0 tokens), and a ``budget``
    column. The value is taken at the first point with x == budget, else between
    the two points that straddle it. A budget beyond the unit's last point gives
    null: we never extrapolate. Returns ``unit, value``.
    """
    c = curve.sort(unit, order).with_columns(
        pl.col(x).shift(1).over(unit).alias("_x0"), pl.col(y).shift(1).over(unit).alias("_y0")
    )
    at_point = pl.col(x) == pl.col(budget)
    inside = (pl.col("_x0") < pl.col(budget)) & (pl.col(budget) < pl.col(x))
    slope = (pl.col(y) - pl.col("_y0")) / (pl.col(x) - pl.col("_x0"))
    hits = (
        c.filter(at_point | inside)
        .with_columns(
            pl.when(at_point)
            .then(pl.col(y))
            .otherwise(pl.col("_y0") + slope * (pl.col(budget) - pl.col("_x0")))
            .cast(pl.Float64)
            .alias("value")
        )
        .group_by(unit)
        .agg(pl.col("value").sort_by(order).first())
    )
    units = c.select(unit).unique()
    return units.join(hits, on=unit, how="left").sort(unit)
