"""Contract of trajhpc.job.scoring: call extraction, tolerant parsing, scores, summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajhpc.data import calls
from trajhpc.data.calls import Call, gold_name, parse_call, parse_failure_reason
from trajhpc.job import scoring
from trajhpc.job.scoring import Score, score, summarize

DATA = Path(__file__).resolve().parent.parent / "trajhpc" / "resources" / "api-bank"
BRACKETLESS = {
    "API-Request: PharmacyLocator(location=New York)",
    "API-Request: OperatingHoursTool(pharmacy_name='PharmaHealth')",
}


def _golds(rel: str, key: str) -> list[str]:
    return [r[key] for r in json.loads((DATA / rel).read_text())]


LEVEL1 = _golds("test-data/level-1-api.json", "expected_output")
LEVEL2 = _golds("test-data/level-2-api.json", "expected_output")
LV3 = _golds("training-data/lv3-api-train.json", "output")
ALL_GOLDS = LEVEL1 + LEVEL2 + LV3


# ---------------------------------------------------------------- real gold data


def test_every_bundled_gold_parses_except_the_two_bracketless():
    failed = {g for g in ALL_GOLDS if parse_call(g) is None}
    assert failed == BRACKETLESS
    assert len(ALL_GOLDS) == 399 + 135 + 907


@pytest.mark.parametrize("gold", sorted(BRACKETLESS))
def test_bracketless_gold_gives_a_clear_reason(gold):
    reason = parse_failure_reason(gold)
    assert reason is not None and "brackets missing" in reason


def test_every_gold_scored_against_itself_is_exact():
    for gold in ALL_GOLDS:
        if gold in BRACKETLESS:  # as a prediction it has no call
            assert score(gold, gold).error == "no_call"
            continue
        s = score(gold, gold)
        assert s.exact and s.error is None and s.arg_precision == s.arg_recall == 1.0, gold


def test_distinct_target_names():
    assert len({gold_name(g) for g in LEVEL1}) == 49
    assert len({gold_name(g) for g in LV3}) == 365
    assert None not in {gold_name(g) for g in LV3}


def test_ast_and_scanner_agree_on_every_valid_python_gold():
    checked = 0
    for gold in ALL_GOLDS:
        found = calls._candidates(gold)
        if found is None:
            continue
        name, spans = found
        via_ast = calls._parse_ast(name, spans[-1])
        if via_ast is not None:
            assert calls._scan_args(spans[-1]) == via_ast, gold
            checked += 1
    # Not valid Python: 31 level-1, 10 level-2 and 75 lv3 gold calls (2 lack brackets).
    assert checked == len(ALL_GOLDS) - 31 - 10 - 75


@pytest.mark.parametrize(
    "span",
    [
        "",
        "a='1'",
        "a = '1' , b=\"2\"",
        "a=\"it's\", b='say \"hi\"'",
        "a='it\\'s', b='x, y=z'",
        "n=5, f=-1.5, ok=True, none=None",
        "items=['a', 'b'], d={'k': [1, 2]}",
        "a='  padded  '",
        "'positional', a='1'",
        "a='x', b=''",
    ],
)
def test_ast_and_scanner_agree_on_valid_python(span):
    via_ast = calls._parse_ast("X", span)
    assert via_ast is not None
    assert calls._scan_args(span) == via_ast


# ---------------------------------------------------------------- parse_call


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("API-Request: [GetToday()]", Call("GetToday", {})),
        ("API-Request: [X(a='1')]<|eot_id|>", Call("X", {"a": "1"})),
        ("Sure! Let me check.\nAPI-Request: [X(a='1')]\nAI: done", Call("X", {"a": "1"})),
        ("[FitnessClassAPI(location=New York)]", Call("FitnessClassAPI", {"location": "New York"})),
        (
            "[S(date=2034-01-02, time=10:00 AM, doctor=Dr. Smith)]",
            Call("S", {"date": "2034-01-02", "time": "10:00 AM", "doctor": "Dr. Smith"}),
        ),
        (
            "[R(health_data='[{'name': 'blood_pressure', 'value': '120/80'}]', user_id='1')]",
            Call("R", {"health_data": "[{'name': 'blood_pressure', 'value': '120/80'}]", "user_id": "1"}),
        ),
        ("[M(attendees='['John', 'Jane']')]", Call("M", {"attendees": "['John', 'Jane']"})),
        ("[M(attendees=['John', 'Jane'])]", Call("M", {"attendees": "['John', 'Jane']"})),
        ("[N(text='I'm late, sorry', to='Bob')]", Call("N", {"text": "I'm late, sorry", "to": "Bob"})),
        ('[N(text="I\'m late", to="Bob")]', Call("N", {"text": "I'm late", "to": "Bob"})),
        ("[E(plan='', t=2034-01-01 10:00:00)]", Call("E", {"plan": "", "t": "2034-01-01 10:00:00"})),
        ("[X(a=' 1 ', b= two )]", Call("X", {"a": "1", "b": "two"})),
        ("[X(a=1)] [Y(b=2)]", Call("X", {"a": "1"})),
        ("[X(a=New York)] then [Y(b=2)]", Call("X", {"a": "New York"})),
        ("[X(a='1')]\n[Y(b='2')]", Call("X", {"a": "1"})),
        ("[X(a='f(x)]')]", Call("X", {"a": "f(x)]"})),
        ("[X(a='1'\n[Y(b='2')]", Call("Y", {"b": "2"})),  # unclosed on its line: next call
    ],
)
def test_parse_call(text, expected):
    assert parse_call(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty output"),
        ("I cannot help with that.", "no '[Name(...)]' call found"),
        ("API-Request: GetToday()", "brackets missing"),
        ("API-Request: [AddAgenda(token='abc', content='me", "not closed by ')]'"),
    ],
)
def test_parse_failure_reason(text, fragment):
    assert parse_call(text) is None
    reason = parse_failure_reason(text)
    assert reason is not None and fragment in reason and "\n" not in reason


def test_no_failure_reason_when_a_call_parses():
    assert parse_failure_reason("API-Request: [GetToday()]") is None


def test_call_is_frozen():
    call = parse_call("[X(a='1')]")
    with pytest.raises(AttributeError):
        call.name = "Y"  # type: ignore[misc]


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


def test_call_names_lists_every_call_start_in_order():
    text = "API-Request: [ToolSearcher(keywords='x')]->{'name': 'Y'}\nAPI-Request: [Y(a=1)] then [Z("
    assert calls.call_names(text) == ["ToolSearcher", "Y", "Z"]
    assert calls.call_names("PharmacyLocator(location=New York)") == []  # bracket-less: not a call start
    assert calls.call_names("[Broken (a=1)]") == []
