"""The tool-documentation control (data.tool_docs): which descriptions a prompt gains."""

from __future__ import annotations

import json

import pytest

from trajhpc.data.apibank import Record, Turn
from trajhpc.data.calls import gold_name
from trajhpc.data.conditions import build_messages
from trajhpc.data.splits import load_study_data
from trajhpc.data.tooldocs import catalogue_line, descriptions, doc_names, searched_descriptions, with_docs
from trajhpc.spec import DataSpec, JobSpec

ORDER = ("care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other")


def record(key: str, index: int, target: str, calls=()) -> Record:
    history = tuple(Turn("api", c, call=c, response=None) for c in calls)
    return Record("x.json", index, key, len(calls), "Generate", ('{"apiCode": "ToolSearcher"}',), history,
                  f"API-Request: {target}", None)


def test_catalogue_line_reads_the_python_assignments_of_all_apis_csv():
    line = catalogue_line("GetUserToken", 'description = "Get a token"\ninput_parameters = {"u": {"type": "str"}}')
    assert json.loads(line) == {"name": "GetUserToken", "description": "Get a token", "input_parameters": {"u": {"type": "str"}}}
    assert catalogue_line("X", "not python (") is None
    assert "GetUserToken" in descriptions() and "AddAgenda" in descriptions()


def test_dialogue_mode_documents_the_dialogues_calls_and_block_mode_the_blocks():
    blocks = {
        "b1": [record("d1", 0, "[AddAgenda(x=1)]", ["[ToolSearcher(k='a')]"]), record("d1", 1, "[GetToday()]"),
               record("d2", 2, "[AddAlarm()]")],
        "b2": [record("d3", 3, "[AddMeeting()]")],
    }
    dialogue = doc_names(blocks, "dialogue")
    # ToolSearcher is already described by the record itself; both records of d1 get d1's calls.
    assert dialogue["x.json#0"] == dialogue["x.json#1"] == ("AddAgenda", "GetToday")
    assert dialogue["x.json#2"] == ("AddAlarm",)
    block = doc_names(blocks, "block")
    assert block["x.json#2"] == ("AddAgenda", "AddAlarm", "GetToday") and block["x.json#3"] == ("AddMeeting",)
    assert doc_names(blocks, "none") == {}
    documented = with_docs(blocks["b1"][:1], dialogue)[0]
    assert [json.loads(x).get("name") for x in documented.api_descriptions[1:]] == ["AddAgenda", "GetToday"]


def test_lv3_tools_are_documented_from_toolsearcher_responses():
    data = load_study_data(DataSpec())
    found = searched_descriptions(r for b in data.blocks for r in data.train[b] + data.heldout[b])
    assert len(found) > 100
    assert json.loads(found["VirtualConsultationScheduler"])["name"] == "VirtualConsultationScheduler"


def _non_toolsearcher_heldout_with_name_in_system(mode: str) -> tuple[int, int]:
    data = load_study_data(DataSpec(tool_docs=mode))
    items = [r for b in data.blocks for r in data.heldout[b] if gold_name(r.target) != "ToolSearcher"]
    return sum(gold_name(r.target) in build_messages(r, "A")[0]["content"] for r in items), len(items)


def test_without_docs_no_a_prompt_names_the_next_tool_and_with_them_most_do():
    assert _non_toolsearcher_heldout_with_name_in_system("none") == (0, 103)
    named, n = _non_toolsearcher_heldout_with_name_in_system("dialogue")
    assert n == 103 and named >= 90  # 93: a few tools are described nowhere in the data


def test_tool_docs_is_part_of_the_job_id_only_when_set():
    spec = JobSpec(condition="B", seed=3, order=ORDER)
    assert JobSpec(condition="B", seed=3, order=ORDER, data=DataSpec(tool_docs="none"), recipe=1).job_id == "01a9c03dd140"
    with_docs_spec = JobSpec(condition="B", seed=3, order=ORDER, data=DataSpec(tool_docs="dialogue"))
    assert with_docs_spec.job_id != spec.job_id and with_docs_spec.to_dict()["data"]["tool_docs"] == "dialogue"


@pytest.mark.parametrize("condition", ["responses-only"])
def test_new_condition_is_a_spec_condition_and_budget_match(condition):
    from trajhpc.spec import TokenBudget

    spec = JobSpec(condition="A", order=ORDER, token_budget=TokenBudget(match=condition))
    assert spec.arm == f"A@{condition}"
    assert JobSpec(condition=condition, order=ORDER).arm == condition
