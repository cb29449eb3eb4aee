"""Contract of trajhpc.data.calls: call extraction and tolerant parsing, on every bundled gold call."""

from __future__ import annotations

import pytest
from golds import ALL_GOLDS, BRACKETLESS, LEVEL1, LV3

from trajhpc.data import calls
from trajhpc.data.calls import Call, gold_name, parse_call, parse_failure_reason

# ---------------------------------------------------------------- real gold data


def test_every_bundled_gold_parses_except_the_two_bracketless():
    failed = {g for g in ALL_GOLDS if parse_call(g) is None}
    assert failed == BRACKETLESS
    assert len(ALL_GOLDS) == 399 + 135 + 907


@pytest.mark.parametrize("gold", sorted(BRACKETLESS))
def test_bracketless_gold_gives_a_clear_reason(gold):
    reason = parse_failure_reason(gold)
    assert reason is not None and "brackets missing" in reason


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


def test_call_names_lists_every_call_start_in_order():
    text = "API-Request: [ToolSearcher(keywords='x')]->{'name': 'Y'}\nAPI-Request: [Y(a=1)] then [Z("
    assert calls.call_names(text) == ["ToolSearcher", "Y", "Z"]
    assert calls.call_names("PharmacyLocator(location=New York)") == []  # bracket-less: not a call start
    assert calls.call_names("[Broken (a=1)]") == []
