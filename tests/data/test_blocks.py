"""Domain blocks, the held-out split, study data and `trajhpc data inspect`."""

from __future__ import annotations

import hashlib
import json

import pytest
from rich.console import Console

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.data.apibank import bundled_root, load_records
from trajhpc.data.blocks import (
    LV3_ORDER,
    assign_blocks,
    block_names,
    bundled_catalogue,
    is_heldout,
    load_catalogue,
)
from trajhpc.data.splits import load_study_data
from trajhpc.spec import BlockRule, BlocksSpec, DataSpec
from trajhpc.study.inspect import block_rows, inspect_command

LV3 = "training-data/lv3-api-train.json"
LEVEL1 = "test-data/level-1-api.json"
LEVEL2 = "test-data/level-2-api.json"
# Reference block names (tests/fixtures/domain_blocks.json) -> this project's names.
REFERENCE_NAMES = {
    "L1_care_appointments": "care-appointments",
    "L2_medication_treatment_info": "medication-treatment",
    "L3_mental_wellness_fitness": "mental-wellness-fitness",
    "L4_cost_insurance_other": "cost-insurance-other",
    "E1_schedule": "schedule",
    "E2_health": "health",
    "E3_account_finance": "account-finance",
    "E4_info_home_travel_fun": "info-home-travel",
}
SCENARIO = BlocksSpec(kind="scenario")


@pytest.fixture(scope="module")
def reference(fixtures_dir) -> dict:
    return json.loads((fixtures_dir / "domain_blocks.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def records() -> dict[str, list]:
    root = bundled_root()
    return {name: load_records(root / name, root=root) for name in (LV3, LEVEL1, LEVEL2)}


def _block_of(blocks: dict[str, list]) -> dict[str, str]:
    return {r.uid: name for name, members in blocks.items() for r in members}


# ---------------------------------------------------------------- partitions


@pytest.mark.parametrize("name, spec", [(LV3, BlocksSpec()), (LEVEL1, SCENARIO), (LEVEL2, SCENARIO)])
def test_assignment_matches_the_reference(records, reference, name, spec):
    block_of = _block_of(assign_blocks(records[name], spec))
    expected = [REFERENCE_NAMES[b] for b in reference["assignments"][name]]
    assert [block_of[r.uid] for r in records[name]] == expected


def test_lv3_block_counts(records):
    blocks = assign_blocks(records[LV3], BlocksSpec())
    assert tuple(blocks) == LV3_ORDER
    assert [len(v) for v in blocks.values()] == [234, 243, 234, 196]
    assert [len({r.dialogue_key for r in v}) for v in blocks.values()] == [80, 94, 90, 60]


@pytest.mark.parametrize("name, counts", [(LEVEL1, [123, 103, 109, 64]), (LEVEL2, [63, 34, 18, 20])])
def test_scenario_block_counts(records, name, counts):
    blocks = assign_blocks(records[name], SCENARIO)
    assert tuple(blocks) == ("schedule", "health", "account-finance", "info-home-travel")
    assert [len(v) for v in blocks.values()] == counts


def test_every_dialogue_is_in_exactly_one_block(records):
    for name, spec in ((LV3, BlocksSpec()), (LEVEL1, SCENARIO)):
        blocks = assign_blocks(records[name], spec)
        owners: dict[str, set[str]] = {}
        for block, members in blocks.items():
            for r in members:
                owners.setdefault(r.dialogue_key, set()).add(block)
        assert all(len(v) == 1 for v in owners.values())
        assert sum(len(v) for v in blocks.values()) == len(records[name])


def test_aliases_resolve_to_the_scenario_of_the_new_name(records):
    block_of = _block_of(assign_blocks(records[LEVEL1], SCENARIO))
    aliased = [r for r in records[LEVEL1] if r.lead_api in ("GetMeeting", "GetReminder")]
    assert aliased and {block_of[r.uid] for r in aliased} == {"schedule"}


def test_block_names_without_data():
    assert block_names(BlocksSpec()) == LV3_ORDER
    assert block_names(BlocksSpec(default="care")) == ("care",) + LV3_ORDER[1:]
    assert block_names(SCENARIO) == ("schedule", "health", "account-finance", "info-home-travel")
    rules = (BlockRule(block="b", regex="x"), BlockRule(block="a", regex="y"), BlockRule(block="b", regex="z"))
    assert block_names(BlocksSpec(rules=rules)) == ("b", "a", "other")
    assert block_names(BlocksSpec(rules=rules, default="a")) == ("b", "a")
    custom = BlocksSpec(kind="scenario", scenarios={"z-home": ("智能家居控制",), "a-rest": ("健康管理",)})
    assert block_names(custom) == ("z-home", "a-rest")


def test_custom_rules_first_match_wins_on_lower_cased_key(records):
    spec = BlocksSpec(rules=(BlockRule(block="bali", regex="bali"), BlockRule(block="book", regex="^book")), default="rest")
    blocks = assign_blocks(records[LV3], spec)
    assert tuple(blocks) == ("bali", "book", "rest")
    assert all("bali" in r.dialogue_key.lower() for r in blocks["bali"])
    assert all(r.dialogue_key.lower().startswith("book") and "bali" not in r.dialogue_key.lower() for r in blocks["book"])
    assert len(blocks["bali"]) > 0 and len(blocks["book"]) > 0


def test_custom_scenarios_accept_english_names(records):
    spec = BlocksSpec(kind="scenario", scenarios={"money": ("finance", "account management")}, default="rest")
    blocks = assign_blocks(records[LEVEL1], spec)
    assert [len(v) for v in blocks.values()] == [109, 399 - 109]


def test_scenario_partition_places_records_without_lead_api_by_its_rules(records):
    """A mix of levels in one partition: level-1/2 by scenario, lv3 by the rules (as manifests/paper.yaml)."""
    from trajhpc.data.blocks import LV3_RULES

    to_scenario = {"cost-insurance-other": "account-finance", "mental-wellness-fitness": "info-home-travel",
                   "medication-treatment": "health"}
    rules = tuple(BlockRule(block=to_scenario[r.block], regex=r.regex) for r in LV3_RULES)
    mixed = BlocksSpec(kind="scenario", rules=rules, default="schedule")
    assert block_names(mixed) == block_names(SCENARIO)
    blocks = assign_blocks(records[LV3] + records[LEVEL1], mixed)
    got = _block_of(blocks)
    by_scenario = _block_of(assign_blocks(records[LEVEL1], SCENARIO))
    by_rules = _block_of(assign_blocks(records[LV3], BlocksSpec()))
    to_scenario["care-appointments"] = "schedule"
    assert got == by_scenario | {uid: to_scenario[block] for uid, block in by_rules.items()}
    # Rule blocks outside the scenario map and the default come after the map's blocks.
    extra = BlocksSpec(kind="scenario", rules=(BlockRule(block="lv3-x", regex="x"),), default="lv3-rest")
    assert block_names(extra) == block_names(SCENARIO) + ("lv3-x", "lv3-rest")
    no_default = BlocksSpec(kind="scenario", rules=(BlockRule(block="health", regex="^zzz"),))
    with pytest.raises(TrajhpcError, match=r"lv3-api-train\.json: record 0 \(dialogue .*\): matches no rule"):
        assign_blocks(records[LV3], no_default)


def test_partition_errors(records):
    bad = BlocksSpec(rules=(BlockRule(block="a", regex="("),))
    with pytest.raises(InputError, match=r"data\.blocks\.rules\[0\]\.regex: invalid regex"):
        assign_blocks(records[LV3], bad)
    with pytest.raises(TrajhpcError, match=r"scenario blocks need level-1/level-2 records"):
        assign_blocks(records[LV3], SCENARIO)
    partial = BlocksSpec(kind="scenario", scenarios={"health": ("健康管理",)})
    with pytest.raises(TrajhpcError, match=r"level-1-api\.json: record 3 \(dialogue 'Calculator-level-1-1\.jsonl'\): scenario '信息查询和处理' is in no block"):
        assign_blocks(records[LEVEL1], partial)
    twice = BlocksSpec(kind="scenario", scenarios={"a": ("travel",), "b": ("旅游出行",)})
    with pytest.raises(InputError, match=r"data\.blocks\.scenarios: scenario '旅游出行' is in both 'a' and 'b'"):
        assign_blocks(records[LEVEL1], twice)


def test_catalogue(tmp_path):
    catalogue = bundled_catalogue()
    assert len(catalogue) == 101 and catalogue["AddReminder"] == "日程安排和管理"
    bad = tmp_path / "all_apis.csv"
    bad.write_text("id,类名\n1,X\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"all_apis\.csv: 应用场景: missing column"):
        load_catalogue(bad)


# ---------------------------------------------------------------- held-out split


def test_heldout_reproduces_the_reference_split(records):
    lv3 = [r for r in records[LV3] if is_heldout(r.dialogue_key, 0.2)]
    assert len(lv3) == 208
    assert is_heldout("Calculate the monthly salary after taxes for a Financial Analyst in New York.", 0.2)
    assert is_heldout("Assist me in finding the nearest medical equipment loan program in New York City.", 0.2)
    assert is_heldout("AddReminder-level-1-1.jsonl", 0.2)
    assert not is_heldout("Access the medical records of a patient named John Smith.", 0.2)
    assert not is_heldout("Assist in paying medical bills for a surgery in Chicago.", 0.2)


@pytest.mark.parametrize("fraction, rule", [(0.2, (5, 1)), (0.25, (4, 1)), (0.5, (2, 1)), (0.3, (10, 3)), (0.15, (20, 3))])
def test_heldout_rule_for_any_fraction(records, fraction, rule):
    modulus, below = rule
    keys = sorted({r.dialogue_key for r in records[LV3]})
    sha = {k: int(hashlib.sha1(k.encode()).hexdigest(), 16) for k in keys}
    assert [is_heldout(k, fraction) for k in keys] == [sha[k] % modulus < below for k in keys]
    share = sum(is_heldout(k, fraction) for k in keys) / len(keys)
    assert abs(share - fraction) < 0.08


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_heldout_fraction_out_of_range(fraction):
    with pytest.raises(TrajhpcError, match="heldout_fraction must be in"):
        is_heldout("x", fraction)


# ---------------------------------------------------------------- study data


def test_study_data_lv3():
    study = load_study_data(DataSpec())
    assert study.blocks == LV3_ORDER
    assert sum(len(v) for v in study.heldout.values()) == 208
    assert study.dialogues == dict(zip(LV3_ORDER, [80, 94, 90, 60]))
    # The two bracket-less gold calls cannot be scored: excluded, with a reason.
    assert study.n_excluded == 2
    assert [e.record.uid for e in study.excluded] == [f"{LV3}#515", f"{LV3}#517"]
    assert all("cannot be scored" in e.reason for e in study.excluded)
    used = {r.uid for part in (study.train, study.heldout) for v in part.values() for r in v}
    assert len(used) == 905 and not used & {e.record.uid for e in study.excluded}
    for block in study.blocks:  # no dialogue is on both sides of the split
        assert not {r.dialogue_key for r in study.train[block]} & {r.dialogue_key for r in study.heldout[block]}


def test_study_data_level1_split():
    study = load_study_data(DataSpec(files=(LEVEL1,), blocks=SCENARIO))
    assert [(len(study.train[b]), len(study.heldout[b])) for b in study.blocks] == [(92, 31), (86, 17), (85, 24), (53, 11)]
    assert study.n_excluded == 0


def test_caps_keep_the_first_records_in_file_order():
    full = load_study_data(DataSpec())
    capped = load_study_data(DataSpec(max_train_per_block=3, max_heldout_per_block=2))
    for block in full.blocks:
        assert capped.train[block] == full.train[block][:3]
        assert capped.heldout[block] == full.heldout[block][:2]
        assert [r.index for r in capped.train[block]] == sorted(r.index for r in capped.train[block])


def test_study_data_several_files_and_local_root(tmp_path, fixtures_dir):
    study = load_study_data(DataSpec(root=str(fixtures_dir), files=("dialogues",), blocks=SCENARIO))
    assert sum(len(study.train[b]) + len(study.heldout[b]) for b in study.blocks) == 13
    # AddAgenda-..., AddReminder-..., GetMeeting-... (alias of QueryMeeting), GetToday-...
    assert study.dialogues == {"schedule": 4, "health": 0, "account-finance": 2, "info-home-travel": 0}
    both = load_study_data(DataSpec(files=(LEVEL1, LEVEL2), blocks=SCENARIO))
    assert sum(len(v) for v in both.train.values()) + sum(len(v) for v in both.heldout.values()) == 399 + 135


def test_order_check_names_unknown_blocks():
    study = load_study_data(DataSpec(max_train_per_block=1, max_heldout_per_block=1))
    study.check_order(["cost-insurance-other", "care-appointments"])
    with pytest.raises(TrajhpcError, match=r"order: unknown block\(s\) \['L1'\]; this partition has \['care-appointments'"):
        study.check_order(["care-appointments", "L1"])


def test_study_data_missing_root_or_file(tmp_path):
    with pytest.raises(TrajhpcError, match=r"data\.root: folder .*nowhere not found"):
        load_study_data(DataSpec(root=str(tmp_path / "nowhere")))
    with pytest.raises(TrajhpcError) as err:
        load_study_data(DataSpec(root=str(tmp_path), files=("training-data/lv1-api-train.json",)))
    assert str(err.value).startswith(f"{tmp_path / 'training-data/lv1-api-train.json'}: file not found")
    assert "liminghao1630/API-Bank" in str(err.value)


# ---------------------------------------------------------------- inspect


def test_block_rows_lv3():
    rows = block_rows(load_study_data(DataSpec()))
    assert [r["block"] for r in rows] == list(LV3_ORDER) + ["total"]
    assert [r["dialogues"] for r in rows] == [80, 94, 90, 60, 324]
    assert [r["train"] + r["heldout"] for r in rows] == [234, 241, 234, 196, 905]
    total = rows[-1]
    # 365 names minus OperatingHoursTool, whose only call is an excluded bracket-less one.
    assert total["api_names"] == 364 and round(total["toolsearcher_share"], 3) == round(462 / 905, 3)


def test_inspect_golden(golden):
    """The rendered table is compared with a golden file."""
    console = Console(record=True, width=80, color_system=None)
    inspect_command(console, source=None, files=None, blocks="lv3-rules", heldout_fraction=0.2)
    text = console.export_text()
    golden("data_inspect_lv3.txt", text)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(blocks="domains"), "--blocks: unknown partition 'domains'"),
        (dict(heldout_fraction=1.5), "--heldout-fraction: must be between 0 and 1"),
        (dict(files=["training-data/lv3-api-train.json"], blocks="scenario"), "scenario blocks need level-1/level-2"),
    ],
)
def test_inspect_errors(kwargs, message):
    args = dict(source=None, files=None, blocks="lv3-rules", heldout_fraction=0.2) | kwargs
    with pytest.raises(TrajhpcError, match=message.replace("(", r"\(")):
        inspect_command(Console(record=True), **args)


@pytest.mark.parametrize(
    "content, where",
    [
        ("id,类名,应用场景\n1,AddAgenda,日程安排和管理\n2,Short\n", r"all_apis\.csv:3: 应用场景: row 2"),
        ("id,类名,应用场景\n1\n", r"all_apis\.csv:2: 类名: row 1"),
    ],
)
def test_short_catalogue_row_names_file_row_and_column(tmp_path, content, where):
    bad = tmp_path / "all_apis.csv"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=where):
        load_catalogue(bad)


def test_unreadable_or_missing_catalogue(tmp_path):
    with pytest.raises(TrajhpcError) as err:
        load_catalogue(tmp_path / "data" / "all_apis.csv")
    message = str(err.value)
    assert "not found" in message and "bundled" in message and "data/all_apis.csv" in message
    folder = tmp_path / "all_apis.csv"
    folder.mkdir()
    with pytest.raises(InputError, match="folder"):
        load_catalogue(folder)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"id,\xff\xfe\n")
    with pytest.raises(InputError, match="UTF-8"):
        load_catalogue(binary)
