"""Domain blocks and the held-out split, both decided per dialogue.

Whole dialogues go to one block (every step of a trajectory stays together), and a
dialogue is held out or not as a whole, by a hash of its key that is the same on
every machine and Python version.

Built-in partitions (FORMAT.md section 3 of the project notes):

* ``lv3-rules``: ordered regexes over the lower-cased dialogue key (the first user
  utterance); the first match wins, unmatched dialogues go to the default block.
* ``scenario``: the ``应用场景`` (scenario) of the dialogue's lead API in
  ``data/all_apis.csv``, mapped to four blocks (level-1/level-2 records); with
  ``rules``, records that have no lead API (lv3, the lv1/lv2 training sets) are placed
  by those rules, so a mix of levels fits one partition.
"""

from __future__ import annotations

import csv
import hashlib
import re
from fractions import Fraction
from functools import cache
from pathlib import Path
from typing import Callable, Iterable, Mapping

from trajhpc.core.errors import InputError, TrajhpcError
from trajhpc.data.apibank import Record, bundled_root
from trajhpc.spec import BlockRule, BlocksSpec

# Matching order L4, L3, L2; everything else is L1 (the default).
LV3_RULES: tuple[BlockRule, ...] = (
    BlockRule(
        block="cost-insurance-other",
        regex=r"\b(cost|costs|price|prices|premium|insurance|bill|bills|salary|tax|taxes|fee|claim|weather"
        r"|travel time|restaurant|restaurants|evacuation|shelter|shelters|hair salon|hurricane|earthquake)",
    ),
    BlockRule(
        block="mental-wellness-fitness",
        regex=r"(mental|anxiety|depress|stress|therapist|counsel|psycholog|meditat|mindful|yoga|wellness|fitness"
        r"|exercise|workout|calorie|treadmill|jogging|zumba|physical therapy|steps|bmi|nutrition|diet"
        r"|carbohydrate|supplement|pregnan)",
    ),
    BlockRule(
        block="medication-treatment",
        regex=r"(pain|acupuncture|insomnia|alternative|medication|medicine|drug|prescription|pharmac|dosage"
        r"|antibiotic|symptom|treatment|clinical trial|research|outbreak|covid|vaccin|allergy|disease|insulin"
        r"|equipment|wheelchair|ventilator|oxygen|loan program)",
    ),
)
LV3_DEFAULT = "care-appointments"
# Partition order = the default training order L1 -> L4.
LV3_ORDER = ("care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other")

SCENARIO_BLOCKS: dict[str, tuple[str, ...]] = {
    "schedule": ("日程安排和管理", "钉钉"),
    "health": ("健康管理",),
    "account-finance": ("账户管理", "财务管理"),
    "info-home-travel": ("信息查询和处理", "智能家居控制", "旅游出行", "娱乐消遣", "学习科研相关", "工作相关"),
}
# English names accepted in custom scenario maps (the catalogue itself is in Chinese).
SCENARIO_EN = {
    "information query & processing": "信息查询和处理",
    "scheduling & management": "日程安排和管理",
    "travel": "旅游出行",
    "finance": "财务管理",
    "health": "健康管理",
    "smart-home control": "智能家居控制",
    "entertainment": "娱乐消遣",
    "account management": "账户管理",
    "study & research": "学习科研相关",
    "work-related": "工作相关",
    "dingtalk": "钉钉",
}
# Old API names used in dialogue file names.
LEAD_API_ALIASES = {"GetMeeting": "QueryMeeting", "GetReminder": "QueryReminder"}
CATALOGUE_FILE = "data/all_apis.csv"
_SCENARIO_COLUMN, _NAME_COLUMN = "应用场景", "类名"
_CUSTOM_DEFAULT = "other"


# ---------------------------------------------------------------- partitions


def _rules_and_default(spec: BlocksSpec) -> tuple[tuple[BlockRule, ...], str]:
    if spec.rules is None:
        return LV3_RULES, spec.default or LV3_DEFAULT
    return spec.rules, spec.default or _CUSTOM_DEFAULT


def block_names(blocks_spec: BlocksSpec) -> tuple[str, ...]:
    """The partition's block names in partition order, without loading any data.

    Built-in lv3 rules: L1..L4. Custom rules: rule blocks in first-appearance order,
    then the default block. Scenarios: the map's keys in order, then blocks only ``rules``
    name, then ``default``, if set.
    """
    if blocks_spec.kind == "scenario":
        names = list(blocks_spec.scenarios or SCENARIO_BLOCKS) + [r.block for r in blocks_spec.rules or ()]
        return tuple(dict.fromkeys(names + ([blocks_spec.default] if blocks_spec.default else [])))
    rules, default = _rules_and_default(blocks_spec)
    if blocks_spec.rules is None:
        return (default,) + LV3_ORDER[1:]
    return tuple(dict.fromkeys([r.block for r in rules] + [default]))


def _rule_matcher(rules: tuple[BlockRule, ...]) -> Callable[[str], str | None]:
    """dialogue key -> block of the first matching regex (on the lower-cased key), or None."""
    compiled: list[tuple[re.Pattern[str], str]] = []
    for i, rule in enumerate(rules):
        try:
            compiled.append((re.compile(rule.regex), rule.block))
        except re.error as err:
            raise InputError(None, f"data.blocks.rules[{i}].regex", f"invalid regex {rule.regex!r} ({err})") from None

    def match(key: str) -> str | None:
        lowered = key.lower()
        for pattern, block in compiled:
            if pattern.search(lowered):
                return block
        return None

    return match


def rule_assigner(blocks_spec: BlocksSpec) -> Callable[[str], str]:
    """dialogue key -> block by the first matching regex (on the lower-cased key)."""
    rules, default = _rules_and_default(blocks_spec)
    match = _rule_matcher(rules)

    def assign(key: str) -> str:
        block = match(key)
        return default if block is None else block

    return assign


def _scenario_to_block(blocks_spec: BlocksSpec) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for block, scenarios in (blocks_spec.scenarios or SCENARIO_BLOCKS).items():
        for name in scenarios:
            zh = SCENARIO_EN.get(name.lower(), name)
            if zh in mapping and mapping[zh] != block:
                raise InputError(None, "data.blocks.scenarios", f"scenario {name!r} is in both {mapping[zh]!r} and {block!r}")
            mapping[zh] = block
    return mapping


def scenario_assigner(blocks_spec: BlocksSpec, catalogue: Mapping[str, str]) -> Callable[[Record], str]:
    """record -> block via the scenario of its dialogue's lead API (``catalogue``: API -> scenario).

    A record without a lead API (lv3, the lv1/lv2 training sets) goes by ``blocks_spec.rules``
    over its dialogue key, when the partition has rules (unmatched: ``default``).
    """
    to_block = _scenario_to_block(blocks_spec)
    by_rules = _rule_matcher(blocks_spec.rules) if blocks_spec.rules else None

    def assign(record: Record) -> str:
        if record.lead_api is None and by_rules is not None:
            block = by_rules(record.dialogue_key)
            block = blocks_spec.default if block is None else block
            if block is None:
                raise TrajhpcError(
                    f"{record.source}: record {record.index} (dialogue {record.dialogue_key[:60]!r}): "
                    "matches no rule of data.blocks.rules; add a rule or set data.blocks.default"
                )
            return block
        if record.lead_api is None:
            raise TrajhpcError(
                f"{record.source}: record {record.index}: scenario blocks need level-1/level-2 records "
                "(with a 'file' field naming the lead API); use blocks kind 'lv3-rules' for lv3 data, "
                "or give the scenario partition rules for the records without one"
            )
        api = LEAD_API_ALIASES.get(record.lead_api, record.lead_api)
        scenario = catalogue.get(api)
        block = to_block.get(scenario) if scenario is not None else None
        if block is None and blocks_spec.default is not None:
            return blocks_spec.default
        if block is None:
            what = f"scenario {scenario!r} is in no block" if scenario else f"API {api!r} is not in {CATALOGUE_FILE}"
            raise TrajhpcError(
                f"{record.source}: record {record.index} (dialogue {record.dialogue_key!r}): {what}; "
                "add it to data.blocks.scenarios or set data.blocks.default"
            )
        return block

    return assign


def assign_blocks(
    records: Iterable[Record],
    blocks_spec: BlocksSpec,
    catalogue: Mapping[str, str] | None = None,
) -> dict[str, list[Record]]:
    """Group records into blocks (keys in partition order, empty blocks kept; records in input order).

    ``catalogue`` (API name -> scenario) is needed for scenario blocks; default: the
    bundled ``data/all_apis.csv``.
    """
    names = block_names(blocks_spec)
    if blocks_spec.kind == "scenario":
        assign = scenario_assigner(blocks_spec, catalogue if catalogue is not None else bundled_catalogue())
    else:
        by_key = rule_assigner(blocks_spec)
        assign = lambda record: by_key(record.dialogue_key)  # noqa: E731
    blocks: dict[str, list[Record]] = {name: [] for name in names}
    for record in records:
        blocks.setdefault(assign(record), []).append(record)
    return blocks


# ---------------------------------------------------------------- catalogue


def load_catalogue(path: str | Path) -> dict[str, str]:
    """API class name -> scenario (``应用场景``) from an ``all_apis.csv``."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {_SCENARIO_COLUMN, _NAME_COLUMN} - set(reader.fieldnames or ())
            if missing:
                raise InputError(path, ", ".join(sorted(missing)), "missing column")
            catalogue: dict[str, str] = {}
            for n, row in enumerate(reader, start=1):
                values = []
                for column in (_NAME_COLUMN, _SCENARIO_COLUMN):
                    value = row.get(column)
                    if not isinstance(value, str):  # a short row: DictReader fills None
                        raise InputError(
                            path, column, f"row {n}: no value (the row has too few columns)", line=reader.line_num
                        )
                    values.append(value.strip())
                catalogue[values[0]] = values[1]
            return catalogue
    except FileNotFoundError:
        raise TrajhpcError(
            f"{path}: API catalogue not found (needed for scenario blocks). A data.root without "
            f"{CATALOGUE_FILE} uses the bundled copy (trajhpc/resources/api-bank/{CATALOGUE_FILE}); "
            f"otherwise copy {CATALOGUE_FILE} from API-Bank (GitHub AlibabaResearch/DAMO-ConvAI, "
            f"api-bank/{CATALOGUE_FILE}) into the data folder"
        ) from None
    except IsADirectoryError:
        raise InputError(path, None, "is a folder, expected the API catalogue CSV file") from None
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise InputError(path, None, f"not a valid CSV file ({err})") from None
    except OSError as err:
        raise InputError(path, None, f"cannot read file ({err.strerror or err})") from None


@cache
def bundled_catalogue() -> dict[str, str]:
    """The bundled ``data/all_apis.csv`` as API -> scenario."""
    return load_catalogue(bundled_root() / CATALOGUE_FILE)


# ---------------------------------------------------------------- held-out split


def _hash(key: str) -> int:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16)


def is_heldout(dialogue_key: str, fraction: float) -> bool:
    """Whether a dialogue is held out: ``sha1(key) % q < p`` where ``p/q`` is ``fraction``
    as a fraction (denominator <= 1000).

    For 1/n fractions this is ``sha1(key) % n == 0``, the rule the API-Bank block tables
    were computed with (0.2 -> ``% 5 == 0``: 208 held-out lv3 records); other fractions
    use the same hash (0.3 -> ``% 10 < 3``).
    """
    if not 0.0 < fraction < 1.0:
        raise TrajhpcError(f"heldout_fraction must be in (0, 1), got {fraction}")
    frac = Fraction(fraction).limit_denominator(1000)
    return _hash(dialogue_key) % frac.denominator < frac.numerator


def split_heldout(records: Iterable[Record], fraction: float) -> tuple[list[Record], list[Record]]:
    """(train, held-out) records, in input order."""
    train: list[Record] = []
    heldout: list[Record] = []
    for record in records:
        (heldout if is_heldout(record.dialogue_key, fraction) else train).append(record)
    return train, heldout
