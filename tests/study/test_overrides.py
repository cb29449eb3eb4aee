"""`--set` overrides: read as YAML, merged into the manifest, validated like the file, blamed by name."""

from __future__ import annotations

import pytest
from conftest import REPO

from trajhpc.core.errors import InputError
from trajhpc.study.grid import expand
from trajhpc.study.manifest import load_manifest, parse_manifest
from trajhpc.study.overrides import apply_overrides, parse_override

SMOKE = REPO / "manifests" / "smoke.yaml"
TEXT = "study: s\nconditions: [A, B]\nseeds: [0]\ntrain:\n  lr: 1.0e-3\n  max_steps: 3\ncontainer: {binds: []}\n"


def _ids(manifest) -> list[str]:
    return [job.job_id for job in expand(manifest)]


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("train.lr=1.0e-4", ("train", "lr"), 1e-4),
        ("seeds=[0,1]", ("seeds",), [0, 1]),
        ("seeds={count: 3, start: 2}", ("seeds",), {"count": 3, "start": 2}),
        ("model=tiny", ("model",), "tiny"),
        ("resources.partition=", ("resources", "partition"), None),
        ("study=a=b", ("study",), "a=b"),  # only the first '=' splits
    ],
)
def test_a_value_is_read_as_yaml(text, path, value):
    o = parse_override(text)
    assert (o.path, o.value) == (path, value)


def test_a_number_pyyaml_reads_as_text_is_taken_as_the_file_takes_it():
    # YAML 1.1 reads 1e-4 as a string; the manifest's fields accept it as a number, in the file and here.
    assert parse_manifest(TEXT, "m.yaml", ["train.lr=1e-4"]).train.lr == 1e-4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lr", "--set train.lr: expected KEY=VALUE"),
        ("=3", "--set =3: expected KEY=VALUE"),
        ("train..lr=1", "--set train..lr=1: 'train..lr' is not a dotted field path"),
        ("seeds=[0,", "--set seeds=[0,: value: not valid YAML"),
        ("train={lr: 1, lr: 2}", "--set train={lr: 1, lr: 2}: lr: value: duplicate key"),
        ("seeds=&a [1]", "--set seeds=&a [1]: value: YAML anchors (&a) are not allowed"),
    ],
)
def test_a_malformed_override_is_refused_naming_it(text, message):
    with pytest.raises(InputError) as err:
        parse_override(text)
    assert str(err.value).startswith(message)


def test_the_example_of_the_issue_names_the_override_not_a_line():
    with pytest.raises(InputError) as err:
        parse_manifest(TEXT, "m.yaml", ["train.lr=abc"])
    assert str(err.value).startswith("--set train.lr=abc: train.lr: Input should be a valid number")


def test_an_unknown_key_names_the_override_and_suggests_the_close_one():
    with pytest.raises(InputError) as err:
        parse_manifest(TEXT, "m.yaml", ["train.lrr=1e-4"])
    assert str(err.value) == "--set train.lrr=1e-4: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"


def test_a_bad_value_inside_a_mapping_value_names_the_override():
    with pytest.raises(InputError) as err:
        parse_manifest(TEXT, "m.yaml", ["train={lr: -1}"])
    assert str(err.value).startswith("--set train={lr: -1}: train.lr: Input should be greater than 0")


def test_a_cross_field_check_on_an_overridden_field_names_the_override():
    with pytest.raises(InputError) as err:
        parse_manifest(TEXT, "m.yaml", ["resources.signal_delay_s=99999"])
    assert str(err.value).startswith("--set resources.signal_delay_s=99999: resources.signal_delay_s: ")


def test_an_error_the_file_makes_still_names_its_line():
    text = TEXT.replace("lr: 1.0e-3", "lr: abc")
    with pytest.raises(InputError) as err:
        parse_manifest(text, "m.yaml", ["seeds=[0,1]"])
    assert str(err.value).startswith("m.yaml:5: train.lr: Input should be a valid number")


def test_the_last_override_of_a_field_wins_and_is_the_one_blamed():
    assert parse_manifest(TEXT, "m.yaml", ["train.lr=1", "train.lr=2"]).train.lr == 2
    with pytest.raises(InputError) as err:
        parse_manifest(TEXT, "m.yaml", ["train.lr=1", "train.lr=x"])
    assert str(err.value).startswith("--set train.lr=x: train.lr:")


def test_overrides_create_missing_mappings_and_index_lists():
    data = {"study": "s", "conditions": ["A", "B"]}
    out = apply_overrides(data, [parse_override("lora.r=4"), parse_override("conditions.1=calls-only")])
    assert out == {"study": "s", "conditions": ["A", "calls-only"], "lora": {"r": 4}}
    assert data == {"study": "s", "conditions": ["A", "B"]}  # the file's mapping is left as read


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("conditions.2=A", "--set conditions.2=A: conditions.2: conditions is a list of 2: use an index 0..1"),
        ("conditions.x=A", "--set conditions.x=A: conditions.x: conditions is a list of 2"),
        ("container.binds.0=/x",
         "--set container.binds.0=/x: container.binds.0: container.binds is a list of 0: set the whole list instead"),
        ("study.x=1", "--set study.x=1: study: is the value 's', not a mapping: cannot set study.x"),
        ("conditions.0.k=2", "--set conditions.0.k=2: conditions.0: is the value 'A', not a mapping"),
    ],
)
def test_a_path_through_a_single_value_or_past_a_list_is_refused(override, message):
    with pytest.raises(InputError) as err:
        parse_manifest(TEXT, "m.yaml", [override])
    assert str(err.value).startswith(message)


def test_ids_follow_the_effective_values_exactly_when_a_value_changes():
    plain = _ids(load_manifest(SMOKE))
    assert _ids(load_manifest(SMOKE, ["train.lr=2.0e-3"])) == plain  # the value the file already has
    assert _ids(load_manifest(SMOKE, ["executor=slurm"])) == plain  # in no job's spec
    changed = _ids(load_manifest(SMOKE, ["train.lr=1e-4"]))
    assert len(changed) == len(plain) and not set(changed) & set(plain)
    # Seeds [0, 1] -> [0]: the seed-0 jobs keep their ids, the seed-1 jobs go.
    assert set(_ids(load_manifest(SMOKE, ["seeds=[0]"]))) < set(plain)


def test_the_manifest_keeps_its_overrides_and_the_merged_mapping():
    m = parse_manifest(TEXT, "m.yaml", ["seeds=[0,1]", "train.lr=1.0e-4"])
    assert m.overrides == ["seeds=[0,1]", "train.lr=1.0e-4"]
    effective = m.effective()
    assert effective["seeds"] == [0, 1] and effective["train"] == {"lr": 1e-4, "max_steps": 3}
    assert parse_manifest(TEXT, "m.yaml").overrides == []


def test_an_analysis_set_on_the_command_line_counts_as_written():
    m = parse_manifest(TEXT, "m.yaml", ["analysis={primary: {arm: A, baseline: B}}"])
    assert m.written("analysis.primary") and not parse_manifest(TEXT, "m.yaml").written("analysis.primary")
    assert m.analysis.primary.arm == "A"
