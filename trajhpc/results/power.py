"""`trajhpc power`: how many units (seed x order pairs) a comparison of two arms needs, and what the
size of the held-out set limits whatever the number of units.

Effects and SDs are in accuracy points (7.7 points = 0.077 in the aggregate's fractions). Two tests:

* **the primary test**, the two-sided sign-flip permutation test over units that the aggregate runs
  (:func:`trajhpc.results.stats.sign_flip_pvalue`: exact up to 16 pairs, Monte Carlo with 10,000 sign
  patterns beyond). Its power is simulated: ``DRAWS`` studies, each unit's paired difference drawn
  from Normal(effect, unit SD) by ``numpy.random.default_rng(SEED)``. Every unit count uses the first
  n of the same draws, so the power curve is smooth in n and a rerun gives the same numbers.
* **the item-level test**: paired per-item differences across the held-out items, modelled as an
  exact sign (McNemar) test. Each of ``items`` items is discordant (one arm right, the other wrong)
  with probability ``discordance``; a discordant item favours the better arm with probability
  (1 + effect / discordance) / 2. Its power is an exact binomial sum, not a simulation. Its sampling
  unit is the item: more units do not raise it, and its standard error (:func:`item_se`) stays.

A test rejects at p <= alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from trajhpc.core.errors import TrajhpcError
from trajhpc.results import stats
from trajhpc.results.studyresult import StudyResult

DRAWS = 2_500  # simulated studies per point: binomial SE of a power <= 0.01
SEED = 0
TARGETS = (0.8, 0.9)
UNIT_STEP = 4
MAX_UNITS = 40
GRID_UNITS = 20  # grid.yaml: 5 seeds x 4 orders per arm
ITEM_METRICS = ("exact", "name")  # primary metrics with a right/wrong per held-out item
_CELLS = 5_000_000  # sign patterns x simulated studies per sign_flip_pvalue call (~40 MB per buffer)


@dataclass(frozen=True)
class Assumptions:
    """What the power depends on: effect and unit SD in accuracy points, discordance a share of items."""

    effect: float = 7.7  # the pilot's API-name gain of B over A
    unit_sd: float = 10.0
    discordance: float = 0.30
    items: int = 208  # lv3's held-out calls (grid.yaml)
    alpha: float = 0.05

    def check(self) -> None:
        """A user mistake as one line (TrajhpcError)."""
        if not 0 < self.alpha < 1:
            raise TrajhpcError(f"--alpha {self.alpha}: must be between 0 and 1")
        if self.unit_sd < 0 or not math.isfinite(self.unit_sd):
            raise TrajhpcError(f"--unit-sd {self.unit_sd}: must be a finite number >= 0")
        if not 0 <= self.discordance <= 1:
            raise TrajhpcError(f"--discordance {self.discordance}: must be a share of the items, 0 to 1")
        if self.items < 1:
            raise TrajhpcError(f"--items {self.items}: must be at least 1")
        if abs(self.effect) > 100 * self.discordance + 1e-9:
            raise TrajhpcError(
                f"an effect of {abs(self.effect):g} points needs at least {abs(self.effect) / 100:g} of the items "
                f"discordant (--discordance is {self.discordance:g}): only items where the arms disagree differ"
            )


# ---------------------------------------------------------------- the sign-flip test over units


def _sign_patterns(n: int) -> np.ndarray:
    codes = np.arange(2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0


def exact_sign_flip_pvalues(d: np.ndarray) -> np.ndarray:
    """:func:`stats.sign_flip_pvalue`'s exact p per column of ``d`` (n x m), counted in the middle.

    The same count (sign patterns whose |mean| reaches the observed |mean|, with the same
    tolerance), but the 2^n patterns are split into two halves of 2^(n/2) partial sums each, one
    half sorted, so each column costs 2^(n/2) binary searches instead of 2^n sums: 16 units x
    2,500 simulated studies in 0.1 s instead of 3 s. ``tests/results/test_power.py`` checks equality.
    """
    n, m = d.shape
    observed = np.abs(d.mean(axis=0))
    tol = 1e-12 * np.maximum(1.0, observed)
    h = n // 2
    first = _sign_patterns(h) @ d[:h]
    second = np.sort(_sign_patterns(n - h) @ d[h:], axis=0)
    threshold = n * (observed - tol)  # |first + second| >= threshold
    out = np.ones(m)
    for j in np.flatnonzero(threshold > 0):  # otherwise every pattern counts: p = 1
        col = second[:, j]
        above = col.size - np.searchsorted(col, threshold[j] - first[:, j], side="left")
        below = np.searchsorted(col, -threshold[j] - first[:, j], side="right")
        out[j] = (above.sum() + below.sum()) / 2**n
    return out


def sign_flip_pvalues(d: np.ndarray) -> np.ndarray:
    """The aggregate's sign-flip p of every column of ``d`` (pairs x simulated studies)."""
    n, m = d.shape
    if n < 63 and 2**n <= stats.MAX_EXACT:
        return exact_sign_flip_pvalues(d)
    # Monte Carlo: stats itself, in column chunks so its (patterns x columns) buffer stays small.
    step = max(1, _CELLS // min(stats.RESAMPLES, max(1, 1_000_000 // n)))
    return np.concatenate([np.asarray(stats.sign_flip_pvalue(d[:, s : s + step])[0]) for s in range(0, m, step)])


@dataclass
class SignFlipPower:
    """Power of the sign-flip test over n units for a unit SD, from one set of standard normal draws."""

    unit_sd: float
    alpha: float = 0.05
    draws: int = DRAWS
    seed: int = SEED
    _z: np.ndarray = field(init=False, repr=False)
    _cache: dict[tuple[float, int], float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._z = np.empty((0, self.draws))

    def _draws(self, n: int) -> np.ndarray:
        # Row-major draws: the first n rows are the same whatever the total, so grow on demand.
        if n > self._z.shape[0]:
            self._z = np.random.default_rng(self.seed).standard_normal((max(n, MAX_UNITS), self.draws))
        return self._z[:n]

    def __call__(self, effect: float, n: int) -> float:
        key = (abs(effect), n)
        if key not in self._cache:
            if stats.smallest_sign_flip_p(n) > self.alpha:
                power = 0.0  # no data can reach alpha
            else:
                p = sign_flip_pvalues(abs(effect) + self.unit_sd * self._draws(n))
                power = float(np.mean(p <= self.alpha))
            self._cache[key] = power
        return self._cache[key]


def min_units(power: Callable[[int], float], grid: Sequence[int], powers: Sequence[float], target: float) -> int | None:
    """The fewest units with power >= ``target``: the first grid point that reaches it, then bisection
    between it and the grid point before (power grows with units); None when no grid point does."""
    hits = [i for i, p in enumerate(powers) if p >= target]
    if not hits:
        return None
    lo, hi = (grid[hits[0] - 1] if hits[0] else 0), grid[hits[0]]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(mid) >= target else (mid, hi)
    return hi


_NORMAL = NormalDist()


def _probit(p: float) -> float:
    return _NORMAL.inv_cdf(min(max(p, 1e-4), 1 - 1e-4))


def detectable_effect(power: Callable[[float], float], target: float, guess: float) -> float | None:
    """The smallest effect with ``power(effect) >= target``, for a power that grows with the effect.

    Steps from ``guess`` (the normal approximation) until two neighbouring effects bracket the
    target, then interpolates between them on the probit scale, where power is close to linear
    in the effect. None when 50 times the guess falls short; the smallest effect tried when every
    step down still reaches the target (only when the unit SD is next to nothing).
    """
    step, x = 0.15 * guess, guess
    y = power(x)
    down = y >= target
    while (y >= target) == down:
        prev, prev_y = x, y
        x = x - step if down else x + step
        if x <= 0:
            return prev
        if x > 50 * guess:
            return None
        y = power(x)
        step *= 1 if down else 1.3
    (lo, y_lo), (hi, y_hi) = sorted([(x, y), (prev, prev_y)])
    a, b = _probit(y_lo), _probit(y_hi)
    return hi if b <= a else lo + (hi - lo) * (_probit(target) - a) / (b - a)


def normal_guess(unit_sd: float, n: int, target: float, alpha: float) -> float:
    """The effect a two-sided z-test over n units detects with power ``target``: a starting point."""
    return unit_sd * (_NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(target)) / math.sqrt(max(n, 1))


# ---------------------------------------------------------------- the item-level test


def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])


def _binomial_pmfs(n: np.ndarray, q: float, log_fact: np.ndarray) -> np.ndarray:
    """P(Bin(n_i, q) = w) as a (len(n), max(n) + 1) matrix, 0 where w > n_i; exact at q = 0 and 1."""
    n = np.asarray(n)[:, None]
    w = np.arange(int(n.max()) + 1)[None, :]
    inside = w <= n
    n_w = np.where(inside, n - w, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0 * log(0) counts as 0: with q = 0 (or 1) the outcome w = 0 (or w = n) is certain.
        terms = np.where(w > 0, w * np.log(q), 0.0) + np.where(n_w > 0, n_w * np.log1p(-q), 0.0)
        log_pmf = log_fact[n] - log_fact[w] - log_fact[n_w] + terms
    return np.where(inside, np.exp(log_pmf), 0.0)


def _critical_counts(items: int, alpha: float) -> np.ndarray:
    """Per k = 0..items discordant items: the largest c with 2 P(Bin(k, 1/2) <= c) <= alpha, -1 when none.
    The sign test rejects when the smaller side has at most c items (as itemstats.mcnemar_exact)."""
    k = np.arange(items + 1)
    null_cdf = np.cumsum(_binomial_pmfs(k, 0.5, _log_factorials(items)), axis=1)
    # A relative 1e-12 so that a tail equal to alpha / 2 in exact arithmetic still counts.
    return (null_cdf <= alpha / 2 * (1 + 1e-12)).sum(axis=1) - 1


def item_power(effect: float, discordance: float, items: int, alpha: float = 0.05) -> float:
    """Exact power of the two-sided sign test over the discordant items among ``items`` (see the module):
    the chance of k discordant items times the chance that their split rejects, summed over k."""
    if discordance <= 0 or items < 1:
        return 0.0
    q = min(1.0, 0.5 * (1 + abs(effect) / 100 / discordance))
    log_fact = _log_factorials(items)
    k = np.arange(items + 1)
    c = _critical_counts(items, alpha)[:, None]
    w = np.arange(items + 1)[None, :]
    rejects = (c >= 0) & ((w <= c) | (w >= k[:, None] - c))
    split = _binomial_pmfs(k, q, log_fact)
    chance_k = _binomial_pmfs(np.array([items]), discordance, log_fact)[0]
    return float(min(1.0, chance_k @ np.where(rejects, split, 0.0).sum(axis=1)))


def item_se(effect: float, discordance: float, items: int) -> float:
    """Item-sampling SE of the difference, in points: a per-item difference is +1 or -1 on the
    discordant items and 0 elsewhere, so its variance is discordance - effect^2, over ``items``."""
    delta = effect / 100
    return 100 * math.sqrt(max(discordance - delta**2, 0.0) / items)


def item_detectable_effect(discordance: float, items: int, target: float, alpha: float = 0.05) -> float | None:
    """The smallest effect (points) the item-level test detects with power ``target`` (bisection)."""
    top = 100 * discordance  # every discordant item favours one arm
    if item_power(top, discordance, items, alpha) < target:
        return None
    lo, hi = 0.0, top
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if item_power(mid, discordance, items, alpha) >= target else (mid, hi)
    return hi


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Everything `trajhpc power` prints for one set of assumptions."""

    assumptions: Assumptions
    units: tuple[int, ...]
    unit_power: tuple[float, ...]
    item_power: float
    min_units: dict[float, int | None]
    item_se: float
    detect_units: int
    unit_detectable: dict[float, float | None]
    item_detectable: dict[float, float | None]
    draws: int = DRAWS


def plan(
    a: Assumptions, *, max_units: int = MAX_UNITS, detect_units: int = GRID_UNITS, draws: int = DRAWS,
    seed: int = SEED, targets: Sequence[float] = TARGETS,
) -> Plan:
    """Power at UNIT_STEP, 2 UNIT_STEP, ... ``max_units`` units, the fewest units for each target, the
    item-level power and SE, and the smallest effects detectable at ``detect_units`` units."""
    a.check()
    grid = tuple(range(UNIT_STEP, max_units + 1, UNIT_STEP)) or (max_units,)
    sim = SignFlipPower(a.unit_sd, a.alpha, draws, seed)
    powers = tuple(sim(a.effect, n) for n in grid)
    fewest = {t: min_units(lambda n: sim(a.effect, n), grid, powers, t) for t in targets}
    unit_mde: dict[float, float | None] = {}
    for t in targets:
        if stats.smallest_sign_flip_p(detect_units) > a.alpha:
            unit_mde[t] = None
        elif a.unit_sd == 0:
            unit_mde[t] = 0.0  # every unit shows the effect exactly
        else:
            guess = normal_guess(a.unit_sd, detect_units, t, a.alpha)
            unit_mde[t] = detectable_effect(lambda e: sim(e, detect_units), t, guess)
    item_mde = {t: item_detectable_effect(a.discordance, a.items, t, a.alpha) for t in targets}
    return Plan(
        a, grid, powers, item_power(a.effect, a.discordance, a.items, a.alpha), fewest,
        item_se(a.effect, a.discordance, a.items), detect_units, unit_mde, item_mde, draws,
    )


# ---------------------------------------------------------------- a finished study


@dataclass(frozen=True)
class StudyEstimates:
    """What a finished study says about the assumptions; None where it cannot say."""

    study: str
    comparison: str  # "B − A in exact"
    pairs: int
    effect: float | None  # points
    unit_sd: float | None  # points
    discordance: float | None
    items: int | None


def item_discordance(
    units: pl.DataFrame, items: pl.DataFrame, arm: str, baseline: str, metric: str
) -> tuple[float, int] | None:
    """(share of the items on which ``arm`` and ``baseline`` disagree, mean over their shared (seed,
    order) units; the median number of items a unit shares), from the final predictions; None
    without shared items."""
    keyed = items.join(units.select("job_id", "arm", "seed", "order"), on="job_id", how="inner")
    x = keyed.filter(pl.col("arm") == arm).select("seed", "order", "item", metric)
    y = keyed.filter(pl.col("arm") == baseline).select("seed", "order", "item", metric)
    joined = x.join(y, on=["seed", "order", "item"], how="inner", suffix="_base")
    if joined.height == 0:
        return None
    per_unit = joined.group_by("seed", "order").agg(
        (pl.col(metric) != pl.col(f"{metric}_base")).mean().alias("discordance"), pl.len().alias("items")
    )
    return float(per_unit["discordance"].mean()), int(round(float(per_unit["items"].median())))


def study_estimates(result: StudyResult, items: pl.DataFrame | None) -> StudyEstimates:
    """The primary comparison's mean paired difference and its SD over units (as paired.csv gives
    them: block means), and the discordance from the final predictions (pooled over items) when the
    metric is scored per item."""
    p = result.primary
    comparison = f"{p.label} in {p.metric}"
    paired = result.paired
    row = None
    if paired.height:
        rows = paired.filter((pl.col("arm") == p.arm) & (pl.col("baseline") == p.baseline) & (pl.col("metric") == p.metric))
        row = rows.row(0, named=True) if rows.height else None
    if row is None or not row["pairs"]:
        return StudyEstimates(result.study, comparison, 0, None, None, None, None)
    scaled = [None if row[k] is None else 100 * row[k] for k in ("mean_diff", "sd")]
    disc = None
    if items is not None and items.height and p.metric in ITEM_METRICS:
        disc = item_discordance(result.units, items, p.arm, p.baseline, p.metric)
    return StudyEstimates(result.study, comparison, row["pairs"], *scaled, *(disc or (None, None)))


_FIELDS = ("effect", "unit_sd", "discordance", "items")


def assumptions_from(
    given: dict[str, Any], estimates: StudyEstimates | None = None, alpha: float = 0.05
) -> tuple[Assumptions, dict[str, str]]:
    """Each value from the command line if given, else from the study if it says, else the default;
    and where each came from ("given", "estimated", "assumed")."""
    default = Assumptions()
    values, sources = {}, {}
    for name in _FIELDS:
        estimated = getattr(estimates, name) if estimates is not None else None
        for source, value in (("given", given.get(name)), ("estimated", estimated), ("assumed", getattr(default, name))):
            if value is not None:
                values[name], sources[name] = value, source
                break
    return Assumptions(**values, alpha=alpha), sources


# ---------------------------------------------------------------- printing


def _power(p: float) -> str:
    return ">0.99" if p >= 0.995 else "<0.01" if 0 < p < 0.005 else f"{p:.2f}"


def _effect(x: float | None) -> str:
    return "none" if x is None else f"{x:.1f}"


def plan_table(p: Plan, width: int):
    """Power per number of units: the smallest p there, the sign-flip power, the item-level power."""
    from trajhpc.core.termtable import Col, fit_table

    smallest = [f"{x:.3f}" if x >= 0.001 else "<0.001" for x in map(stats.smallest_sign_flip_p, p.units)]
    cols = [
        Col("units", [str(n) for n in p.units], justify="right"),
        Col("smallest p", smallest, keep=10, justify="right"),
        Col("sign-flip power\n(over units)", [_power(x) for x in p.unit_power], justify="right"),
        Col(f"item-level power\n({p.assumptions.items} items)", [_power(p.item_power)] * len(p.units),
            keep=20, justify="right"),
    ]
    return fit_table(cols, width, title=f"power at alpha {p.assumptions.alpha:g}")


def summary_lines(p: Plan) -> list[str]:
    """What the table means, one line each (under 80 characters): the fewest units per target power,
    the item-level SE, the smallest detectable effects."""
    a, lines = p.assumptions, []
    for t, n in p.min_units.items():
        units = f"from {n} units" if n is not None else f"not by {p.units[-1]} units"
        item = "always" if p.item_power >= t else "never"
        lines.append(f"{t:.0%} power: sign-flip {units}; item-level {item} ({_power(p.item_power)}, any units)")
    lines.append(f"item-sampling SE of the difference on {a.items} items: {p.item_se:.1f} points, at any units")
    detect = [(f"at {p.detect_units} units", "sign-flip", p.unit_detectable),
              (f"on {a.items} items", "item-level", p.item_detectable)]
    for where, test, effects in detect:
        found = ", ".join(f"{_effect(e)} ({t:.0%})" for t, e in effects.items())
        lines.append(f"smallest effect {where}, points: {test} {found}")
    return lines


def print_plan(console: Any, p: Plan, title: str, sources: dict[str, str]) -> None:
    a = p.assumptions
    values = {"effect": f"effect {a.effect:.1f} points", "unit_sd": f"unit SD {a.unit_sd:.1f} points",
              "discordance": f"discordance {a.discordance:.2f}", "items": f"{a.items} items"}
    by_source: dict[str, list[str]] = {}
    for name, text in values.items():
        by_source.setdefault(sources[name], []).append(text)
    for line in [title, *(f"{src}: {', '.join(texts)}" for src, texts in by_source.items())]:
        console.print(line, highlight=False, markup=False)
    console.print(plan_table(p, console.width))
    for line in summary_lines(p):
        console.print(line, highlight=False, markup=False)
    console.print(
        f"Two-sided, rejecting at p <= {a.alpha:g}. The sign-flip test as `trajhpc aggregate` runs it (exact up "
        f"to 16 units, else {stats.RESAMPLES:,} sign patterns), power simulated over {p.draws:,} studies with "
        f"Normal(effect, unit SD) unit differences (numpy default_rng({SEED})). Item-level: exact sign test over "
        "the discordant items, exact power, items taken as independent (the aggregate's item test flips whole "
        "dialogues: with items correlated within a dialogue its power is lower).", style="dim", highlight=False, markup=False,
    )


def power_command(
    console: Any, targets: Sequence[Path], *, effect: float | None = None, unit_sd: float | None = None,
    discordance: float | None = None, items: int | None = None, alpha: float = 0.05, units: int | None = None,
    max_units: int = MAX_UNITS, overrides: Sequence[str] = (),
) -> list[Plan]:
    """CLI entry: the plan for the given values, or for each study under ``targets`` (its estimates
    where the command line gives none; manifest targets read with the ``--set`` ``overrides``)."""
    given = {"effect": effect, "unit_sd": unit_sd, "discordance": discordance, "items": items}
    if max_units < 1:
        raise TrajhpcError(f"--max-units {max_units}: must be at least 1")
    if not targets:
        a, sources = assumptions_from(given, alpha=alpha)
        p = plan(a, max_units=max_units, detect_units=units or GRID_UNITS)
        print_plan(console, p, "power of a comparison of two arms (arm − baseline)", sources)
        return [p]
    from trajhpc.core.gcpause import gc_paused
    from trajhpc.results.aggregate import read_studies
    from trajhpc.results.jobrecords import read_items
    from trajhpc.results.tables import analyze_study

    plans = []
    with gc_paused():
        studies = read_studies(targets, overrides=overrides)
    for s in studies:
        with gc_paused():  # without items: the item-level tables (and their bootstrap) are not needed
            result = analyze_study(s.folder.name, s.folder, s.records, manifest=s.manifest)
            est = study_estimates(result, read_items(s.records)[0])
        a, sources = assumptions_from(given, est, alpha=alpha)
        p = plan(a, max_units=max_units, detect_units=units or est.pairs or GRID_UNITS)
        print_plan(console, p, f"study {est.study}: {est.comparison}, {est.pairs} pairs", sources)
        plans.append(p)
    return plans
