"""The ceiling of each condition, from the data alone: identical prompts must get one answer."""

from __future__ import annotations

import pytest

from trajhpc.data.apibank import Record, Turn
from trajhpc.data.ceiling import CEILING_COLUMNS, ceiling, study_ceiling_rows
from trajhpc.data.splits import load_study_data
from trajhpc.spec import DataSpec

SEARCH = "[ToolSearcher(keywords='dentist')]"


def _record(index: int, history: tuple[Turn, ...], target: str, dialogue: str = "d#0") -> Record:
    step = sum(t.role == "api" for t in history)
    return Record("hand.json", index, dialogue, step, "Generate an API request", ("{}",), history, target, None)


def _dialogue() -> list[Record]:
    """One user turn answered by a search, then by the tool the search found: A's two prompts coincide."""
    user = Turn("user", "Find a dentist in Boston.")
    api = Turn("api", SEARCH + "->{'name': 'DentistFinder'}", call=SEARCH, response="{'name': 'DentistFinder'}")
    return [
        _record(0, (user,), "API-Request: " + SEARCH),
        _record(1, (user, api), "API-Request: [DentistFinder(city='Boston')]"),
    ]


def test_a_cannot_tell_the_search_from_the_call_it_finds_the_other_conditions_can():
    records = _dialogue()
    a = ceiling(records, "A")
    assert (a.records, a.distinct_prompts, a.shared_prompt_other_target) == (2, 1, 2)
    assert (a.ceiling_exact, a.ceiling_name) == (0.5, 0.5)
    for condition in ("A-slots", "B", "calls-only", "responses-only"):
        c = ceiling(records, condition)
        assert (c.distinct_prompts, c.shared_prompt_other_target, c.ceiling_exact, c.ceiling_name) == (2, 0, 1.0, 1.0)


def test_targets_that_score_as_the_same_call_are_one_answer_and_the_name_ceiling_can_be_higher():
    user = Turn("user", "Salary?")
    records = [
        _record(0, (user,), "API-Request: [GetSalary(job=Analyst)]"),
        _record(1, (user,), "API-Request: [GetSalary(job=\"Analyst\")]"),  # parses to the same call
        _record(2, (user,), "API-Request: [GetSalary(job='Clerk')]"),
    ]
    c = ceiling(records, "B")
    assert (c.distinct_prompts, c.shared_prompt_other_target) == (1, 3)
    assert c.ceiling_exact == pytest.approx(2 / 3) and c.ceiling_name == 1.0


def test_no_records_no_ceiling():
    c = ceiling([], "A")
    assert (c.records, c.distinct_prompts, c.ceiling_exact, c.ceiling_name) == (0, 0, None, None)


@pytest.fixture(scope="module")
def default_split():
    return load_study_data(DataSpec())


# Measured on the bundled lv3 data, default split (heldout_fraction 0.2), held-out items:
# (distinct prompts, records sharing a prompt with another target, ceiling exact, ceiling name) of 208.
HELDOUT = {
    "A": (71, 207, 74 / 208, 105 / 208),  # 0.356 / 0.505
    "A-slots": (194, 8, 205 / 208, 207 / 208),  # 0.986 / 0.995
    "calls-only": (198, 5, 206 / 208, 1.0),
    "responses-only": (195, 6, 206 / 208, 1.0),
    "B": (198, 5, 206 / 208, 1.0),  # 0.990 (0.986 if targets were compared as strings)
}


@pytest.mark.parametrize("condition", list(HELDOUT))
def test_heldout_ceilings_on_the_default_split(default_split, condition):
    (_, row) = study_ceiling_rows(condition, condition, None, "none", default_split)
    assert list(row) == list(CEILING_COLUMNS)
    assert (row["split"], row["records"]) == ("heldout", 208)
    distinct, shared, exact, name = HELDOUT[condition]
    assert (row["distinct_prompts"], row["shared_prompt_other_target"]) == (distinct, shared)
    assert row["ceiling_exact"] == pytest.approx(exact) and row["ceiling_name"] == pytest.approx(name)


def test_train_split_and_all_records_under_a(default_split):
    train, _ = study_ceiling_rows("A", "A", None, "none", default_split)
    assert (train["split"], train["records"], train["distinct_prompts"]) == ("train", 697, 263)
    everything = [r for b in default_split.blocks for r in default_split.train[b] + default_split.heldout[b]]
    whole = ceiling(everything, "A")  # the figure: 905 records, 334 prompts, 903 sharing one
    assert (whole.records, whole.distinct_prompts, whole.shared_prompt_other_target) == (905, 334, 903)


def test_train_rows_count_only_the_blocks_trained_on(default_split):
    first = default_split.blocks[0]
    train, heldout = study_ceiling_rows("B", "B", None, "none", default_split, train_blocks=[first])
    assert train["records"] == len(default_split.train[first])
    assert heldout["records"] == 208  # every block is evaluated
    train, _ = study_ceiling_rows("B", "B", None, "none", default_split, train_blocks=["no-such-block"])
    assert (train["records"], train["ceiling_exact"]) == (0, None)


def test_tool_docs_do_not_lift_the_ceiling_of_a():
    docs = load_study_data(DataSpec(tool_docs="dialogue"))
    _, row = study_ceiling_rows("A+docs-dialogue", "A", None, "dialogue", docs)
    assert (row["arm"], row["tool_docs"], row["distinct_prompts"]) == ("A+docs-dialogue", "dialogue", 71)
    assert row["ceiling_exact"] == pytest.approx(74 / 208)
