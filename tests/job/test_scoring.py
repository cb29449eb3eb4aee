"""Contract of trajhpc.job.scoring: a prediction against its gold call, error types, summaries."""

from __future__ import annotations

import json

import pytest
from golds import ALL_GOLDS, BRACKETLESS

from trajhpc.data.calls import gold_name
from trajhpc.job import scoring
from trajhpc.job.scoring import Score, score, summarize


def test_every_gold_scored_against_itself_is_exact():
    for gold in ALL_GOLDS:
        if gold in BRACKETLESS:  # as a prediction it has no call
            assert score(gold, gold).error == "no_call"
            continue
        s = score(gold, gold)
        assert s.exact and s.error is None and s.arg_precision == s.arg_recall == 1.0, gold


# ---------------------------------------------------------------- score

GOLD = "API-Request: [AddReminder(token='t1', content='Call mom', time='2022-05-10 10:00:00')]"


@pytest.mark.parametrize(
    ("prediction", "error", "name"),
    [
        ("API-Request: [AddReminder(token='t1', content='Call mom', time='2022-05-10 10:00:00')]", None, True),
        ("I will add a reminder.", "no_call", False),
        ("[addreminder(token='t1', content='Call mom', time='2022-05-10 10:00:00')]", "name_mismatch", False),
        ("[AddReminder(token='t1', content='Call mom')]", "missing_arg", True),
        # missing takes precedence over extra and wrong values
        ("[AddReminder(token='t2', content='Call mom', when='x')]", "missing_arg", True),
        ("[AddReminder(token='t1', content='Call mom', time='2022-05-10 10:00:00', x='1')]", "extra_arg", True),
        # extra takes precedence over wrong values
        ("[AddReminder(token='t2', content='Call mom', time='2022-05-10 10:00:00', x='1')]", "extra_arg", True),
        ("[AddReminder(token='t2', content='Call mom', time='2022-05-10 10:00:00')]", "wrong_value", True),
        ("[AddReminder(token='t1', content='call mom', time='2022-05-10 10:00:00')]", "wrong_value", True),
    ],
)
def test_score_error_types(prediction, error, name):
    s = score(prediction, GOLD)
    assert s.error == error
    assert s.name is name
    assert s.exact is (error is None)


def test_score_values_are_stripped_and_quote_style_free():
    s = score('[AddReminder(time=" 2022-05-10 10:00:00", content="Call mom ", token=t1)]', GOLD)
    assert s.exact


@pytest.mark.parametrize(
    ("prediction", "precision", "recall"),
    [
        # 2 of 2 predicted pairs right, 2 of 3 gold pairs found
        ("[AddReminder(token='t1', content='Call mom')]", 1.0, 2 / 3),
        # 1 of 4 predicted pairs right, 1 of 3 gold pairs found
        ("[AddReminder(token='t1', content='x', time='y', z='1')]", 1 / 4, 1 / 3),
        ("[AddReminder(token='t9', content='x', time='y')]", 0.0, 0.0),
        ("[AddReminder()]", 0.0, 0.0),  # empty prediction, non-empty gold
        ("[Other(token='t1')]", 0.0, 0.0),  # wrong name: arguments not comparable
        ("nothing", 0.0, 0.0),
    ],
)
def test_arg_precision_recall(prediction, precision, recall):
    s = score(prediction, GOLD)
    assert s.arg_precision == pytest.approx(precision)
    assert s.arg_recall == pytest.approx(recall)


def test_arg_scores_when_sets_are_empty():
    both = score("[GetToday()]", "API-Request: [GetToday()]")
    assert (both.arg_precision, both.arg_recall, both.exact) == (1.0, 1.0, True)
    extra = score("[GetToday(x='1')]", "API-Request: [GetToday()]")
    assert (extra.arg_precision, extra.arg_recall, extra.error) == (0.0, 0.0, "extra_arg")


def test_first_call_wins_and_names_are_case_sensitive():
    assert score("[AddReminder(token='t1')] [GetToday()]", "[GetToday()]").error == "name_mismatch"
    assert score("[GETTODAY()]", "[GetToday()]").error == "name_mismatch"


def test_bracketless_gold_is_still_scorable():
    gold = "API-Request: PharmacyLocator(location=New York)"
    assert score("API-Request: [PharmacyLocator(location='New York')]", gold).exact
    assert gold_name(gold) == "PharmacyLocator"


def test_unparsable_gold_raises():
    with pytest.raises(ValueError, match="gold has no parsable call"):
        score("[X()]", "AI: hello")


def test_score_to_dict():
    d = score("[AddReminder(token='t1', content='Call mom')]", GOLD).to_dict()
    assert d == {
        "exact": False,
        "name": True,
        "error": "missing_arg",
        "arg_precision": 1.0,
        "arg_recall": pytest.approx(2 / 3),
    }
    json.dumps(d)


# ---------------------------------------------------------------- summarize


def test_summarize_hand_computed():
    golds = [
        "[ToolSearcher(keywords='a')]",
        "[ToolSearcher(keywords='b')]",
        "[X(a='1', b='2')]",
        "[Y()]",
    ]
    preds = [
        "[ToolSearcher(keywords='a')]",  # exact
        "no call here",  # no_call
        "[X(a='1')]",  # missing_arg, P=1, R=1/2 -> F1=2/3
        "[Z()]",  # name_mismatch
    ]
    scores = [score(p, g) for p, g in zip(preds, golds)]
    summary = summarize(scores, [gold_name(g) for g in golds])
    assert summary == {
        "n": 4,
        "exact": 0.25,
        "name": 0.5,
        "name_excl_toolsearcher": 0.5,
        "parse_fail": 0.25,
        "arg_f1": pytest.approx((1 + 0 + 2 / 3 + 0) / 4),
        "errors": {"no_call": 1, "name_mismatch": 1, "missing_arg": 1, "extra_arg": 0, "wrong_value": 0},
    }


def test_summarize_only_toolsearcher_targets():
    s = summarize([score("[ToolSearcher(keywords='a')]", "[ToolSearcher(keywords='a')]")], ["ToolSearcher"])
    assert s["name_excl_toolsearcher"] is None
    assert s["name"] == 1.0


def test_summarize_empty_and_mismatched_lengths():
    empty = summarize([], [])
    assert empty["n"] == 0 and empty["exact"] is None
    assert empty["errors"] == dict.fromkeys(scoring.ERROR_TYPES, 0)
    with pytest.raises(ValueError, match="2 scores but 1 gold names"):
        summarize([Score(True, True, None, 1.0, 1.0)] * 2, ["X"])
