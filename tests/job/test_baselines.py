"""Baselines from the data alone and per-example prompt diagnostics, on toy data with known answers."""

from __future__ import annotations

import pytest

from trajhpc.data.apibank import Record, Turn
from trajhpc.data.splits import load_study_data
from trajhpc.job.baselines import baseline_rows, diagnostics, first_listed_api, last_call, most_frequent_api
from trajhpc.spec import DataSpec


def rec(i: int, target: str, calls=(), described=("ToolSearcher",)) -> Record:
    history = tuple(Turn("api", c, call=c, response=None) for c in calls)
    descriptions = tuple(f'{{"name": "{n}"}}' for n in described)
    return Record("toy.json", i, f"d{i}", len(calls), "Generate", descriptions, history, f"API-Request: {target}", None)


TRAIN = {"b": [rec(0, "[ToolSearcher(keywords='x')]"), rec(1, "[GetToday()]"), rec(2, "[GetToday()]")]}
HELDOUT = {
    "b": [
        rec(10, "[ToolSearcher(keywords='y')]"),
        rec(11, "[GetToday()]", calls=["[GetToday()]"]),
        rec(12, "[AddAlarm(time='9')]", calls=["[AddAlarm(time='9')]"], described=("AddAlarm",)),
        rec(13, "[AddAlarm(time='10')]", calls=["[AddAlarm(time='9')]"]),
    ]
}


def value(rows, baseline, block, metric):
    (row,) = [r for r in rows if (r["baseline"], r["block"], r["metric"]) == (baseline, block, metric)]
    return row["value"], row["n"]


def test_baselines_on_a_toy_set_with_known_answers():
    rows = baseline_rows(TRAIN, HELDOUT)
    assert value(rows, "always-toolsearcher", "b", "name") == (0.25, 4)
    assert value(rows, "always-toolsearcher", "b", "exact") == (0.0, 4)  # ToolSearcher always has keywords
    assert value(rows, "most-frequent-api", "b", "name") == (0.25, 4)  # GetToday, 2 of 3 in training
    assert value(rows, "most-frequent-api", "b", "exact") == (0.25, 4)  # GetToday() takes no arguments
    assert value(rows, "first-listed-api", "b", "name") == (0.5, 4)  # ToolSearcher x1, AddAlarm x1
    assert value(rows, "repeat-last-call", "b", "exact") == (0.5, 4)  # #11 and #12 repeat their last call
    assert value(rows, "repeat-last-call", "b", "name") == (0.75, 4)
    assert value(rows, "repeat-last-call", "all", "exact") == (0.5, 4)


def test_helpers():
    assert most_frequent_api(TRAIN["b"]) == "GetToday"
    assert most_frequent_api([]) is None
    assert first_listed_api(rec(0, "[X()]", described=("A", "B"))) == "A"
    assert last_call(HELDOUT["b"][3]) == "API-Request: [AddAlarm(time='9')]" and last_call(HELDOUT["b"][0]) is None


@pytest.mark.parametrize(
    "gold, prompt, expected",
    [
        ("API-Request: [ToolSearcher(keywords='dentist')]", "find a dentist", ("toolsearcher", False, True)),
        ("API-Request: [AddAlarm(time='9:00')]", "AddAlarm at 9:00", ("tool", True, True)),
        ("API-Request: [AddAlarm(time='9:00')]", "an alarm at 9:00", ("tool", False, True)),
        ("API-Request: [AddAlarm(time='9:00', name='x y')]", "AddAlarm at 9:00", ("tool", True, False)),
        ("API-Request: [GetToday()]", "nothing", ("tool", False, True)),
    ],
)
def test_diagnostics(gold, prompt, expected):
    d = diagnostics(gold, prompt)
    assert (d["target_kind"], d["gold_name_in_prompt"], d["gold_values_in_prompt"]) == expected


def test_always_toolsearcher_on_lv3_is_about_half_the_names():
    data = load_study_data(DataSpec())
    rows = baseline_rows(data.train, data.heldout)
    name, n = value(rows, "always-toolsearcher", "all", "name")
    assert n == sum(len(v) for v in data.heldout.values()) and 0.4 < name < 0.6
