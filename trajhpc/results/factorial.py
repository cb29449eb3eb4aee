"""The conditions' decompositions: position x content, calls x responses; paired over (seed, order) units.

The arms differ only in what the history keeps of earlier API turns: ``A`` (nothing),
``A-slots`` (one content-free line per turn), ``calls-only``, ``responses-only``, ``B`` (all).
Per unit:

- ``position``: A-slots - A, what knowing the step (how many calls came before, and where) is worth;
- ``content``: B - A-slots, what the trajectory's content adds once the step is known
  (position + content = B - A);
- ``calls``: the mean effect of keeping the calls, ((calls-only - A) + (B - responses-only)) / 2;
- ``responses``: the mean effect of keeping the responses, ((responses-only - A) + (B - calls-only)) / 2;
- ``interaction``: (B - responses-only) - (calls-only - A), how much keeping the calls
  helps more when the responses are kept too.

Each decomposition is estimated when its arms are present, over the units present in all of
its arms, as the mean with a bootstrap CI and a sign-flip p (trajhpc.results.stats), like the
paired arm differences.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from trajhpc.results.stats import describe, sign_flip_pvalue

FACTORIAL_ARMS = ("A", "calls-only", "responses-only", "B")
POSITION_ARMS = ("A", "A-slots", "B")


def position_values(a: np.ndarray, slots: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit position and content effects from A, A-slots and B (same unit order)."""
    return {"position": slots - a, "content": b - slots}


def effect_values(a: np.ndarray, calls: np.ndarray, responses: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit effects from the four arms' per-unit values (same unit order)."""
    return {
        "calls": ((calls - a) + (b - responses)) / 2,
        "responses": ((responses - a) + (b - calls)) / 2,
        "interaction": (b - responses) - (calls - a),
    }


DECOMPOSITIONS: tuple[tuple[tuple[str, ...], Callable[..., dict[str, np.ndarray]]], ...] = (
    (POSITION_ARMS, position_values),
    (FACTORIAL_ARMS, effect_values),
)


def factorial_rows(values: Mapping[str, Mapping[Any, float]], metric: str) -> list[dict[str, Any]]:
    """``effect, metric, estimate, ci_low, ci_high, p_value, p_kind, n`` rows of every decomposition whose
    arms are all present (position and content first); none when none is.

    ``values`` maps arm -> {unit: value}; each decomposition counts the units present in all its arms.
    """
    rows = []
    for arms, effects in DECOMPOSITIONS:
        if not all(arm in values for arm in arms):
            continue
        units = sorted(set.intersection(*(set(values[arm]) for arm in arms)), key=str)
        if not units:
            continue
        per_arm = [np.array([values[arm][u] for u in units], dtype=float) for arm in arms]
        for effect, per_unit in effects(*per_arm).items():
            est = describe(list(per_unit))
            p, exact = sign_flip_pvalue(per_unit)
            rows.append({"effect": effect, "metric": metric, "estimate": est.mean, "ci_low": est.lo,
                         "ci_high": est.hi, "p_value": p, "p_kind": "exact" if exact else "monte-carlo",
                         "n": len(units)})
    return rows
