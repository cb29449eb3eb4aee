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


def plant_slots(position: float, content: float, units: int = 6) -> dict:
    base = {u: 0.2 + 0.01 * u for u in range(units)}
    return {
        "A": base,
        "A-slots": {u: v + position for u, v in base.items()},
        "B": {u: v + position + content for u, v in base.items()},
    }


def test_with_a_slots_the_position_and_content_effects_are_recovered():
    rows = {r["effect"]: r for r in factorial_rows(plant_slots(0.15, 0.05), "exact")}
    assert set(rows) == {"position", "content"}  # calls-only, responses-only absent: no calls x responses rows
    assert rows["position"]["estimate"] == pytest.approx(0.15)  # A-slots - A
    assert rows["content"]["estimate"] == pytest.approx(0.05)  # B - A-slots
    assert rows["position"]["p_value"] == pytest.approx(2 / 2**6)
    assert all(r["n"] == 6 and r["metric"] == "exact" for r in rows.values())


def test_all_five_arms_give_position_and_content_first_then_the_calls_x_responses_effects():
    values = {**plant(0.10, 0.04, 0.06), "A-slots": plant_slots(0.03, 0.0)["A-slots"]}
    rows = factorial_rows(values, "exact")
    assert [r["effect"] for r in rows] == ["position", "content", "calls", "responses", "interaction"]
    by = {r["effect"]: r["estimate"] for r in rows}
    assert by["position"] == pytest.approx(0.03)
    assert by["content"] == pytest.approx(0.14 - 0.03)  # B is 0.10 + 0.04 above A
    assert by["calls"] == pytest.approx(0.10)


def test_position_and_content_count_only_units_of_a_a_slots_and_b():
    values = {**plant(0.1, 0.0, 0.0), "A-slots": plant_slots(0.02, 0.0)["A-slots"]}
    del values["A-slots"][0], values["A-slots"][1]
    del values["calls-only"][5]
    n = {r["effect"]: r["n"] for r in factorial_rows(values, "exact")}
    assert n == {"position": 4, "content": 4, "calls": 5, "responses": 5, "interaction": 5}
