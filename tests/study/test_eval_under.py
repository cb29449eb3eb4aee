"""eval.also_under: the conditions a job is scored under besides its own (issue 20 item 2)."""

from __future__ import annotations

import pytest

from trajhpc.core.errors import InputError
from trajhpc.spec import EvalSpec, JobSpec, spec_from_dict
from trajhpc.study.grid import expand
from trajhpc.study.manifest import parse_manifest

ORDER = ("care-appointments", "medication-treatment")
HEAD = "study: s\nconditions: [A, calls-only, B]\n"


def test_default_leaves_the_id_and_the_json_as_they_were():
    plain = JobSpec(condition="A", order=ORDER)
    assert "also_under" not in plain.to_dict()["eval"]
    assert JobSpec(condition="A", order=ORDER, eval=EvalSpec(also_under=())).job_id == plain.job_id


def test_set_it_is_part_of_the_id_and_one_set_is_one_id_in_any_order():
    plain = JobSpec(condition="A", order=ORDER)
    under_b = JobSpec(condition="A", order=ORDER, eval=EvalSpec(also_under=("B",)))
    assert under_b.to_dict()["eval"]["also_under"] == ["B"]
    assert under_b.job_id != plain.job_id
    one = EvalSpec(also_under=("B", "A-slots"))
    assert one.also_under == ("A-slots", "B")
    assert one == EvalSpec(also_under=("A-slots", "B"))
    assert spec_from_dict(under_b.to_dict()).job_id == under_b.job_id


@pytest.mark.parametrize(
    "value, message",
    [
        (["B", "B"], "lists 'B' more than once"),
        (["last-k"], "'last-k' needs k"),
        (["C"], "Input should be 'A', 'A-slots', 'B'"),
    ],
)
def test_bad_conditions_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        EvalSpec(also_under=value)


def test_a_spec_listing_its_own_condition_is_refused_naming_the_file(tmp_path):
    doc = JobSpec(condition="A", order=ORDER).to_dict()
    doc["eval"]["also_under"] = ["A", "B"]
    with pytest.raises(InputError, match=r"spec\.json: .*eval\.also_under lists 'A', the job's own condition"):
        spec_from_dict(doc, tmp_path / "spec.json")


def test_manifest_evaluates_each_arm_also_under_the_others_but_its_own():
    jobs = expand(parse_manifest(HEAD + "seeds: [0]\norders: [[care-appointments, medication-treatment, "
                                 "mental-wellness-fitness, cost-insurance-other]]\neval: {also_under: [B, A]}\n"))
    under = {j.spec.condition: j.spec.eval.also_under for j in jobs}
    assert under == {"A": ("B",), "calls-only": ("A", "B"), "B": ("A",)}
    # The arm's own condition dropped: B evaluated also under B alone is the plain B job.
    only_b = expand(parse_manifest(HEAD + "eval: {also_under: [B]}\n"))
    plain = expand(parse_manifest(HEAD))
    ids = {j.spec.condition: set() for j in plain}
    for j in plain:
        ids[j.spec.condition].add(j.job_id)
    assert {j.job_id for j in only_b if j.spec.condition == "B"} == ids["B"]
    assert not {j.job_id for j in only_b if j.spec.condition == "A"} & ids["A"]


@pytest.mark.parametrize(
    "tail, message",
    [
        ("eval: {also_under: [B, B]}\n", r"^m\.yaml:3: eval\.also_under: .*lists 'B' more than once"),
        ("eval:\n  also_under: [Bee]\n", r"^m\.yaml:4: eval\.also_under\.0: Input should be 'A'"),
        ("eval: {also_under: [last-k]}\n", r"^m\.yaml:3: eval\.also_under: .*'last-k' needs k"),
        ("eval: {also_under: B}\n", r"^m\.yaml:3: eval\.also_under: "),
    ],
)
def test_manifest_errors_name_the_file_line_and_field(tail, message):
    with pytest.raises(InputError) as err:
        parse_manifest(HEAD + tail, "m.yaml")
    assert __import__("re").search(message, str(err.value)), str(err.value)
