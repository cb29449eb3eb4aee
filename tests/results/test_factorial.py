"""The calls x responses factorial on synthetic units with planted effects."""

from __future__ import annotations

import pytest

from trajhpc.results.factorial import factorial_rows


def plant(calls: float, responses: float, interaction: float, units: int = 6) -> dict:
    base = {u: 0.2 + 0.01 * u for u in range(units)}
    return {
        "A": base,
        "calls-only": {u: v + calls - interaction / 2 for u, v in base.items()},
        "responses-only": {u: v + responses - interaction / 2 for u, v in base.items()},
        "B": {u: v + calls + responses for u, v in base.items()},
    }


def test_planted_main_effects_and_interaction_are_recovered():
    rows = {r["effect"]: r for r in factorial_rows(plant(0.10, 0.04, 0.06), "exact")}
    assert rows["calls"]["estimate"] == pytest.approx(0.10)
    assert rows["responses"]["estimate"] == pytest.approx(0.04)
    assert rows["interaction"]["estimate"] == pytest.approx(0.06)
    assert all(r["n"] == 6 and r["metric"] == "exact" and r["p_kind"] == "exact" for r in rows.values())
    assert rows["calls"]["p_value"] == pytest.approx(2 / 2**6)  # every unit agrees in sign


def test_no_effect_no_interaction():
    rows = {r["effect"]: r for r in factorial_rows(plant(0.0, 0.0, 0.0), "name")}
    assert all(r["estimate"] == pytest.approx(0.0) for r in rows.values())


def test_only_units_in_all_four_arms_count_and_missing_arms_give_nothing():
    values = plant(0.1, 0.0, 0.0)
    del values["B"][0]
    assert {r["n"] for r in factorial_rows(values, "exact")} == {5}
    del values["responses-only"]
    assert factorial_rows(values, "exact") == []
