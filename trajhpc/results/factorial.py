"""The calls x responses factorial: main effects and interaction, paired over (seed, order) units.

The four arms differ only in what the history keeps of earlier API turns:
``A`` (neither), ``calls-only``, ``responses-only``, ``B`` (both). Per unit:

- ``calls``: the mean effect of keeping the calls, ((calls-only - A) + (B - responses-only)) / 2;
- ``responses``: the mean effect of keeping the responses, ((responses-only - A) + (B - calls-only)) / 2;
- ``interaction``: (B - responses-only) - (calls-only - A), how much keeping the calls
  helps more when the responses are kept too.

Each is estimated as the mean over units present in all four arms, with a bootstrap CI
and a sign-flip p (trajhpc.results.stats), like the paired arm differences.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from trajhpc.results.stats import describe, sign_flip_pvalue

FACTORIAL_ARMS = ("A", "calls-only", "responses-only", "B")


def effect_values(a: np.ndarray, calls: np.ndarray, responses: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit effects from the four arms' per-unit values (same unit order)."""
    return {
        "calls": ((calls - a) + (b - responses)) / 2,
        "responses": ((responses - a) + (b - calls)) / 2,
        "interaction": (b - responses) - (calls - a),
    }


def factorial_rows(values: Mapping[str, Mapping[Any, float]], metric: str) -> list[dict[str, Any]]:
    """``effect, metric, estimate, ci_low, ci_high, p_value, n`` rows; empty unless all four arms are present.

    ``values`` maps arm -> {unit: value}; only units present in all four arms count.
    """
    if not all(arm in values for arm in FACTORIAL_ARMS):
        return []
    units = sorted(set.intersection(*(set(values[arm]) for arm in FACTORIAL_ARMS)), key=str)
    if not units:
        return []
    arms = [np.array([values[arm][u] for u in units], dtype=float) for arm in FACTORIAL_ARMS]
    rows = []
    for effect, per_unit in effect_values(*arms).items():
        est = describe(list(per_unit))
        p, exact = sign_flip_pvalue(per_unit)
        rows.append({"effect": effect, "metric": metric, "estimate": est.mean, "ci_low": est.lo,
                     "ci_high": est.hi, "p_value": p, "p_kind": "exact" if exact else "monte-carlo", "n": len(units)})
    return rows
