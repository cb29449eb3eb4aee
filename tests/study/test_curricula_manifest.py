"""Curricula and compute controls as manifest arms: names, spec fields, ids, and refusals naming file, line and field."""

from __future__ import annotations

import pytest

from trajhpc.core.errors import InputError
from trajhpc.spec import DEFAULT_REPLAY, JobSpec
from trajhpc.study.grid import expand
from trajhpc.study.manifest import parse_manifest

HEAD = "study: s\nconditions:\n  - A\n"  # the entry under test is on line 4


def test_curricula_and_controls_are_arms_with_readable_names():
    m = parse_manifest(
        HEAD + "  - B\n  - {condition: B, token_budget: {match: A}}\n  - {condition: A, token_budget: {match: B}}\n"
        "  - {condition: B, curriculum: replay}\n  - {condition: B, curriculum: replay, replay: 0.5}\n"
        "  - {condition: B, curriculum: joint}\n  - {condition: B, curriculum: joint, tool_docs: dialogue}\n"
        "orders: [[care-appointments, cost-insurance-other]]\n",
        "m.yaml",
    )
    assert m.arms() == ["A", "B", "B@A", "A@B", "B+replay", "B+replay0.5", "B+joint", "B+docs-dialogue+joint"]
    specs = {j.spec.arm: j.spec for j in expand(m)}
    assert set(specs) == set(m.arms())
    assert (specs["B+replay"].curriculum, specs["B+replay"].replay) == ("replay", DEFAULT_REPLAY)
    assert (specs["B+replay0.5"].curriculum, specs["B+replay0.5"].replay) == ("replay", 0.5)
    assert specs["B+joint"].stage_blocks == ("care-appointments+cost-insurance-other",)
    assert specs["B+joint"].block_stage == {"care-appointments": 1, "cost-insurance-other": 1}
    assert specs["B"].stage_blocks == ("care-appointments", "cost-insurance-other")
    assert specs["B+replay"].block_stage == {"care-appointments": 1, "cost-insurance-other": 2}


def test_the_default_share_written_or_not_is_one_arm_and_one_job():
    m = parse_manifest(HEAD + "  - {condition: B, curriculum: replay}\n  - {condition: B, curriculum: replay, "
                       f"replay: {DEFAULT_REPLAY}}}\nseeds: [0]\norders: [[care-appointments]]\n", "m.yaml")
    assert m.arms() == ["A", "B+replay"]
    assert len(expand(m)) == 2


def test_sequential_curriculum_keeps_the_spec_json_and_the_id():
    plain = JobSpec(condition="B", order=("a", "b"))
    explicit = JobSpec(condition="B", order=("a", "b"), curriculum="sequential")
    assert "curriculum" not in plain.to_dict() and "replay" not in plain.to_dict()
    assert explicit.job_id == plain.job_id
    replay = JobSpec(condition="B", order=("a", "b"), curriculum="replay")
    assert replay.to_dict()["curriculum"] == "replay" and replay.to_dict()["replay"] == DEFAULT_REPLAY
    assert len({plain.job_id, replay.job_id, JobSpec(condition="B", order=("a", "b"), curriculum="joint").job_id}) == 3
    assert JobSpec.model_validate(replay.to_dict()) == replay


@pytest.mark.parametrize(
    ("entry", "field", "message"),
    [
        ("{condition: B, replay: 0.5}", "conditions.1",
         "replay is the share of earlier blocks' examples of curriculum replay; add curriculum: replay"),
        ("{condition: B, curriculum: joint, replay: 0.5}", "conditions.1", "(this entry's curriculum is joint)"),
        ("{condition: B, curriculum: replay, replay: 1.0}", "conditions.1.replay", "less than 1"),
        ("{condition: B, curriculum: replay, replay: 0}", "conditions.1.replay", "greater than 0"),
        ("{condition: B, curriculum: replay, replay: true}", "conditions.1.replay", "not true/false"),
        ("{condition: B, curriculum: interleaved}", "conditions.1.curriculum", "'sequential', 'joint' or 'replay'"),
        ("{condition: B, curriculum: joint, token_budget: {match: A}}", "conditions.1",
         "token_budget works with curriculum sequential only, not joint"),
    ],
)
def test_bad_curricula_name_file_line_and_field(entry, field, message):
    with pytest.raises(InputError) as err:
        parse_manifest(HEAD + f"  - {entry}\n", "m.yaml")
    assert err.value.line == 4 and err.value.field == field
    assert str(err.value).startswith(f"m.yaml:4: {field}: ") and message in str(err.value)


def test_a_spec_json_with_a_bad_curriculum_names_the_field():
    from trajhpc.spec import spec_from_dict

    with pytest.raises(InputError, match="replay.*needs curriculum 'replay', not 'sequential'"):
        spec_from_dict({"condition": "B", "order": ["a"], "replay": 0.5, "recipe": 2}, "spec.json")
    with pytest.raises(InputError, match="token_budget works with curriculum 'sequential' only, not 'replay'"):
        spec_from_dict({"condition": "B", "order": ["a"], "curriculum": "replay", "token_budget": {"match": "A"},
                        "recipe": 2}, "spec.json")
