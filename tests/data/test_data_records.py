"""API-Bank records: loaders for both file shapes, parsed histories, bad-input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.data.apibank import (
    GENERATE_MARKER,
    Turn,
    bundled_root,
    load_any,
    load_dialogue_jsonl,
    load_records,
    parse_input,
    split_call,
)

LV3 = "training-data/lv3-api-train.json"
LEVEL1 = "test-data/level-1-api.json"
LEVEL2 = "test-data/level-2-api.json"
# Target API name, bracket-less gold lines included (counts follow the API-Bank notes).
_NAME = re.compile(r"API-Request: \[?(\w+)\(")


@pytest.fixture(scope="module")
def bundled() -> dict[str, list]:
    root = bundled_root()
    return {name: load_records(root / name, root=root) for name in (LV3, LEVEL1, LEVEL2)}


@pytest.fixture(scope="module")
def raw() -> dict[str, list[dict]]:
    root = bundled_root()
    return {name: json.loads((root / name).read_text(encoding="utf-8")) for name in (LV3, LEVEL1, LEVEL2)}


# ---------------------------------------------------------------- bundled data


@pytest.mark.parametrize("name, n_records, n_names", [(LEVEL1, 399, 49), (LEVEL2, 135, 30), (LV3, 907, 365)])
def test_bundled_counts(bundled, name, n_records, n_names):
    records = bundled[name]
    assert len(records) == n_records
    assert len({_NAME.match(r.target).group(1) for r in records}) == n_names
    assert [r.index for r in records] == list(range(n_records))
    assert {r.source for r in records} == {name}


def test_bundled_root_holds_the_package_copy():
    root = bundled_root()
    assert (root / LV3).is_file() and (root / "data/all_apis.csv").is_file()
    assert root.parts[-3:] == ("trajhpc", "resources", "api-bank")


@pytest.mark.parametrize("name", [LV3, LEVEL1, LEVEL2])
def test_history_round_trips_to_the_original_input(bundled, raw, name):
    """Descriptions + history lines rebuild the input text exactly (nothing lost or altered)."""
    for record, obj in zip(bundled[name], raw[name]):
        lines = list(d for d in record.api_descriptions if d in obj["input"]) + [t.line() for t in record.history]
        cue = obj["input"].index(GENERATE_MARKER)
        assert "\n".join(lines) == obj["input"][:cue].rstrip("\n"), record.uid
        target = obj.get("output", obj.get("expected_output"))
        assert record.target == target.strip()


@pytest.mark.parametrize("name", [LV3, LEVEL1, LEVEL2])
def test_instruction_and_descriptions_rebuild_the_system_text(bundled, raw, name):
    for record, obj in zip(bundled[name], raw[name]):
        in_instruction = [d for d in record.api_descriptions if d not in obj["input"]]
        assert record.instruction + "API descriptions:\n" + "\n".join(in_instruction) == obj["instruction"]
        assert record.api_descriptions, record.uid
        assert all(json.loads(d) for d in record.api_descriptions)


def test_lv3_description_is_the_toolsearcher_line(bundled):
    record = bundled[LV3][5]
    assert len(record.api_descriptions) == 1
    assert json.loads(record.api_descriptions[0])["apiCode"] == "ToolSearcher"
    assert "API descriptions:" not in record.instruction and "{{time}}" in record.instruction


def test_lv3_record_fields(bundled):
    record = bundled[LV3][5]
    assert record.dialogue_key == "Book a wellness retreat for two people in Bali, Indonesia."
    assert record.step == 1 and record.lead_api is None and record.uid == f"{LV3}#5"
    user, api = record.history
    assert user == Turn("user", "Book a wellness retreat for two people in Bali, Indonesia.TIME: 2035-07-15 10:00:00")
    assert api.role == "api"
    assert api.call == "[ToolSearcher(keywords='wellness retreats in Bali')]"
    assert api.response.startswith("{'name': 'WellnessRetreatsInBali', 'description'")
    assert record.target == "API-Request: [WellnessRetreatsInBali(location='Bali')]"


def test_lv3_dialogue_keys(bundled):
    keys = {r.dialogue_key for r in bundled[LV3]}
    assert len(keys) == 324  # 333 if the TIME suffix were kept
    assert not any("TIME:" in k or k != k.strip() for k in keys)


def test_level1_record_fields(bundled):
    record = next(r for r in bundled[LEVEL1] if r.dialogue_key == "AddReminder-level-1-1.jsonl" and r.step == 1)
    assert record.lead_api == "AddReminder"
    assert [t.role for t in record.history] == ["user", "ai", "user", "ai", "api", "ai", "user", "ai", "user", "ai"]
    api = record.history[4]
    assert api.call == "[GetUserToken(username='user1', password='user1pass')]"
    assert api.response == "{'token': 'n9m8k7j6h5g4f3d2s1a0'}"
    lead = next(r for r in bundled[LEVEL1] if r.dialogue_key.startswith("AddAgenda-AddAlarm-GetUserToken-level-2-1"))
    assert lead.lead_api == "AddAgenda"


def test_every_api_turn_splits_once_at_the_call_boundary(bundled):
    n = 0
    for records in bundled.values():
        for record in records:
            assert record.step == len(record.api_turns)
            for turn in record.api_turns:
                n += 1
                assert turn.call + "->" + turn.response == turn.text
                assert turn.call.endswith(("]", ")")) and "]->" not in turn.call
    assert n == 932 + 269 + 110  # API-Request lines in the three files' inputs


def test_split_call_cases():
    assert split_call("[A(x='1')]->{'k': 'v]->w'}") == ("[A(x='1')]", "{'k': 'v]->w'}")
    assert split_call("PharmacyLocator(location=New York)->{'a': 1}") == ("PharmacyLocator(location=New York)", "{'a': 1}")
    assert split_call("[GetToday()]") == ("[GetToday()]", None)
    assert Turn("api", "[GetToday()]", "[GetToday()]", None).line(with_response=False) == "API-Request: [GetToday()]"


def test_bracketless_history_line_is_split(bundled):
    turns = [t for r in bundled[LV3] for t in r.api_turns if t.call.startswith("PharmacyLocator(")]
    assert turns and all(t.call == "PharmacyLocator(location=New York)" for t in turns)
    assert all(t.response.startswith("{'pharmacies'") for t in turns)


def test_parse_input_continuation_and_cue():
    descriptions, turns = parse_input('{"apiCode": "X"}\nUser: hi\nsecond line\nAI: ok\nGenerate API Request: \nignored')
    assert descriptions == ('{"apiCode": "X"}',)
    assert turns == (Turn("user", "hi\nsecond line"), Turn("ai", "ok"))


# ---------------------------------------------------------------- raw dialogue files


def test_jsonl_one_record_per_api_line(fixtures_dir):
    path = fixtures_dir / "dialogues" / "AddReminder-level-1-1.jsonl"
    records = load_dialogue_jsonl(path, root=fixtures_dir)
    assert [r.target for r in records] == [
        "API-Request: [GetUserToken(username='user1', password='user1pass')]",
        "API-Request: [AddReminder(token='n9m8k7j6h5g4f3d2s1a0', content='Call mom', time='2022-05-10 10:00:00')]",
    ]
    assert [r.step for r in records] == [0, 1] and [r.index for r in records] == [0, 1]
    assert [len(r.history) for r in records] == [4, 10]
    assert {r.source for r in records} == {"dialogues/AddReminder-level-1-1.jsonl"}
    assert {r.dialogue_key for r in records} == {"AddReminder-level-1-1.jsonl"}
    assert records[1].history[4].response == "{'token': 'n9m8k7j6h5g4f3d2s1a0'}"


@pytest.mark.parametrize(
    "name, test_file",
    [
        ("AddReminder-level-1-1.jsonl", LEVEL1),
        ("AddAgenda-AddAlarm-GetUserToken-level-2-1.jsonl", LEVEL1),
        ("GetMeeting-level-1-1.jsonl", LEVEL1),
        ("GetToday-level-3-1.jsonl", LEVEL2),
        ("QueryBalance-level-3-1.jsonl", LEVEL2),
    ],
)
def test_jsonl_records_match_the_released_test_records(bundled, fixtures_dir, name, test_file):
    """Where the GitHub dialogue and the released JSON agree, the records are identical."""
    from_jsonl = load_dialogue_jsonl(fixtures_dir / "dialogues" / name)
    from_json = [r for r in bundled[test_file] if r.dialogue_key == name]
    assert len(from_jsonl) == len(from_json) > 0
    for a, b in zip(from_jsonl, from_json):
        assert (a.target, a.history, a.instruction, a.step, a.lead_api) == (b.target, b.history, b.instruction, b.step, b.lead_api)
        assert set(a.api_descriptions) == set(b.api_descriptions)


def test_jsonl_retrieval_dialogue_describes_only_toolsearcher(fixtures_dir):
    # The released JSON has one more call in this dialogue than the GitHub file.
    records = load_dialogue_jsonl(fixtures_dir / "dialogues" / "QueryStock-level-3-1.jsonl")
    assert [json.loads(d)["name"] for d in records[0].api_descriptions] == ["ToolSearcher"]
    assert records[1].history[-1].call == "[ToolSearcher(keywords='Query Stock')]"
    assert records[1].history[-1].response.startswith("{'name': 'QueryStock', 'description'")


def test_jsonl_empty_file_and_folder(fixtures_dir):
    assert load_dialogue_jsonl(fixtures_dir / "dialogues" / "SearchEngine-level-1-1.jsonl") == []
    records = load_any(fixtures_dir / "dialogues", root=fixtures_dir)
    assert len(records) == 3 + 2 + 2 + 2 + 2 + 2  # API lines of the six non-empty fixture dialogues
    assert records[0].source == "dialogues/AddAgenda-AddAlarm-GetUserToken-level-2-1.jsonl"  # sorted names


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"role": "User", "text": "hi"}\n{"role": "API", "api_name": 3}\n')
    with pytest.raises(InputError) as err:
        load_dialogue_jsonl(path)
    assert str(err.value).startswith(f"{path}:2: api_name:")
    path.write_text('{"role": "User", "text": "hi"}\nnot json\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2: not valid JSON"):
        load_dialogue_jsonl(path)
    path.write_text('{"role": "Robot", "text": "hi"}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:1: role: expected an object with role User, AI or API"):
        load_dialogue_jsonl(path)


# ---------------------------------------------------------------- bad input


def _write(tmp_path: Path, obj) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    return path


GOOD = {"instruction": "H\nAPI descriptions:\n{}", "input": "User: hi\nGenerate API Request:\n", "output": "API-Request: [A()]"}


def test_missing_file_names_path_and_how_to_get_it(tmp_path):
    path = tmp_path / "training-data" / "lv1-api-train.json"
    with pytest.raises(TrajhpcError) as err:
        load_records(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: file not found")
    assert "liminghao1630/API-Bank" in msg and "data.root" in msg and "\n" not in msg


def test_missing_field_names_file_and_record(tmp_path):
    path = _write(tmp_path, [GOOD, {k: v for k, v in GOOD.items() if k != "input"}])
    with pytest.raises(InputError) as err:
        load_records(path)
    assert str(err.value) == f"{path}: record 1: missing field 'input'"
    path = _write(tmp_path, [{k: v for k, v in GOOD.items() if k != "output"}])
    with pytest.raises(InputError, match=r"bad\.json: record 0: missing field 'output' or 'expected_output'"):
        load_records(path)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"records": [GOOD]}, "bad.json: expected a JSON list of records at the top level, got dict"),
        ([GOOD, "text"], "bad.json: record 1: expected an object with 'instruction', 'input', 'output', got str"),
        ([dict(GOOD, input=3)], "bad.json: record 0.input: expected a string, got int"),
        ([dict(GOOD, output="AI: hello")], "bad.json: record 0.output: expected an 'API-Request: [...]' line"),
        ([dict(GOOD, input="Generate API Request:\n")], "bad.json: record 0.input: no 'User: ' turn"),
    ],
)
def test_malformed_records(tmp_path, obj, message):
    path = _write(tmp_path, obj)
    with pytest.raises(InputError) as err:
        load_records(path)
    assert str(err.value).startswith(str(tmp_path / message))


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"instruction": }\n]')
    with pytest.raises(InputError, match=r"bad\.json:2: not valid JSON"):
        load_records(path)


@pytest.mark.parametrize("loader", [load_records, load_dialogue_jsonl])
def test_unreadable_files_are_input_errors_naming_the_file(tmp_path, loader):
    folder = tmp_path / "lv3-api-train.json"
    folder.mkdir()
    with pytest.raises(InputError) as err:
        loader(folder)
    assert str(folder) in str(err.value) and "folder" in str(err.value)
    binary = tmp_path / "bad.json"
    binary.write_bytes(b'[{"instruction": "\xff\xfe"}]')
    with pytest.raises(InputError) as err:
        loader(binary)
    assert str(binary) in str(err.value) and "UTF-8" in str(err.value)
