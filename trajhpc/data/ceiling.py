"""The ceiling of each condition, from the data alone: the best any model can score when
identical prompts must get one answer.

A model's prediction is a function of its prompt (system + user message; greedy decoding).
Where several records render to the same prompt under a condition but have different
targets, at most the most frequent of those targets can be right for all of them. Under
``A`` the ToolSearcher call and the tool call of one user turn share a prompt, so A cannot
reach what the other conditions can. Calls are compared as scoring compares them
(:func:`trajhpc.data.calls.parse_gold`: the name and the arguments as stripped strings), so
two gold strings that score as the same call count as one answer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.apibank import Record
from trajhpc.data.calls import parse_gold
from trajhpc.data.conditions import build_messages
from trajhpc.data.splits import StudyData, load_study_data
from trajhpc.spec import JobSpec

CEILING_COLUMNS = (
    "arm", "tool_docs", "split", "records", "distinct_prompts", "shared_prompt_other_target",
    "ceiling_exact", "ceiling_name",
)


@dataclass(frozen=True)
class Ceiling:
    """The ceiling of one set of records under one condition.

    ``shared_prompt_other_target``: records whose prompt is also the prompt of a record with
    another target (as scored); ``ceiling_exact``/``ceiling_name``: the share of records the
    best one-answer-per-prompt predictor gets exactly right / right by API name (None when
    there are no records).
    """

    records: int
    distinct_prompts: int
    shared_prompt_other_target: int
    ceiling_exact: float | None
    ceiling_name: float | None


def prompt_key(record: Record, condition: str, k: int | None = None) -> tuple[str, str]:
    """What a model sees of ``record`` under ``condition``: its system and user message."""
    system, user, _ = build_messages(record, condition, k)
    return system["content"], user["content"]


def _answer(record: Record) -> tuple[str, tuple[tuple[str, str], ...]]:
    call = parse_gold(record.target)
    if call is None:  # load_study_data excludes these records; a caller passing one is a bug
        raise ValueError(f"{record.uid}: gold has no parsable call: {record.target!r}")
    return call.name, tuple(sorted(call.args.items()))


def ceiling(records: Sequence[Record], condition: str, k: int | None = None) -> Ceiling:
    """The ceiling of ``records`` under ``condition`` (see the module docstring)."""
    groups: dict[tuple[str, str], list[tuple[str, tuple[tuple[str, str], ...]]]] = defaultdict(list)
    for record in records:
        groups[prompt_key(record, condition, k)].append(_answer(record))
    exact = name = shared = 0
    for answers in groups.values():
        exact += Counter(answers).most_common(1)[0][1]
        name += Counter(n for n, _ in answers).most_common(1)[0][1]
        if len(set(answers)) > 1:
            shared += len(answers)
    n = len(records)
    return Ceiling(
        records=n,
        distinct_prompts=len(groups),
        shared_prompt_other_target=shared,
        ceiling_exact=exact / n if n else None,
        ceiling_name=name / n if n else None,
    )


def ceiling_row(arm: str, tool_docs: str, split: str, records: Iterable[Record], condition: str,
                k: int | None = None) -> dict[str, object]:
    """One ``ceiling.csv`` row (:data:`CEILING_COLUMNS`)."""
    c = ceiling(list(records), condition, k)
    return {"arm": arm, "tool_docs": tool_docs, "split": split, "records": c.records,
            "distinct_prompts": c.distinct_prompts, "shared_prompt_other_target": c.shared_prompt_other_target,
            "ceiling_exact": c.ceiling_exact, "ceiling_name": c.ceiling_name}


def study_ceiling_rows(arm: str, condition: str, k: int | None, tool_docs: str, study: StudyData,
                       train_blocks: Sequence[str] | None = None) -> list[dict[str, object]]:
    """The ``train`` and ``heldout`` rows of one arm, on the data its jobs use: training records of
    ``train_blocks`` (default: every block; a job trains on its order's blocks), held-out records of
    every block (a job evaluates them all). ``study`` must be loaded with the arm's ``tool_docs``."""
    blocks = study.blocks if train_blocks is None else [b for b in study.blocks if b in set(train_blocks)]
    train = [r for b in blocks for r in study.train[b]]
    heldout = [r for b in study.blocks for r in study.heldout[b]]
    return [ceiling_row(arm, tool_docs, "train", train, condition, k),
            ceiling_row(arm, tool_docs, "heldout", heldout, condition, k)]


def arms_ceiling_rows(specs: Mapping[str, Sequence[JobSpec]]) -> tuple[list[dict[str, object]], list[tuple[str, str]]]:
    """``ceiling.csv`` rows of each arm (in the mapping's order) from its jobs' specs, and (arm, why) for
    each arm whose data could not be loaded. An arm's data is its first spec's (its jobs share it);
    its train rows count the blocks its jobs' orders train on. Data shared by arms is loaded once."""
    rows: list[dict[str, object]] = []
    failed: list[tuple[str, str]] = []
    loaded: dict[str, StudyData | str] = {}
    for arm, arm_specs in specs.items():
        spec = arm_specs[0]
        key = spec.data.model_dump_json()
        if key not in loaded:
            try:
                loaded[key] = load_study_data(spec.data)
            except (TrajhpcError, OSError) as err:
                loaded[key] = str(err)
        study = loaded[key]
        if isinstance(study, str):
            failed.append((arm, study))
            continue
        blocks = {b for s in arm_specs for b in s.order}
        rows += study_ceiling_rows(arm, spec.condition, spec.condition_k, spec.data.tool_docs, study, blocks)
    return rows, failed
