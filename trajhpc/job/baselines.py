"""Trivial baselines computed from the data alone, and per-example diagnostics of a prompt.

A reader needs them beside the arms to tell learning from format: a model that always
writes ``[ToolSearcher(...)]`` already gets about half of the lv3 names right.

Baselines (each a prediction per held-out record, scored like a model's output):

- ``always-toolsearcher``: ``[ToolSearcher()]``;
- ``most-frequent-api``: ``[Name()]`` for the block's most frequent gold API in training;
- ``first-listed-api``: ``[Name()]`` for the first API the record's instruction describes;
- ``repeat-last-call``: the record's last earlier call, verbatim (no call: no prediction).

Diagnostics of one held-out example (``predictions/stage-K.jsonl``): ``target_kind``
(``toolsearcher`` / ``tool``), ``gold_name_in_prompt`` and ``gold_values_in_prompt``
(every gold argument value appears verbatim in the prompt; true when there are none).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping, Sequence

from trajhpc.data.apibank import CALL_PREFIX, Record, description_name
from trajhpc.data.calls import TOOL_SEARCHER, gold_name, parse_gold
from trajhpc.job.scoring import score

BASELINES = ("always-toolsearcher", "most-frequent-api", "first-listed-api", "repeat-last-call")


def first_listed_api(record: Record) -> str | None:
    """Name of the first API the record's system message describes."""
    return next((n for n in map(description_name, record.api_descriptions) if n), None)


def last_call(record: Record) -> str | None:
    """The record's last earlier call as a prediction line, or None when it has none."""
    calls = [t.call or t.text for t in record.history if t.role == "api"]
    return CALL_PREFIX + calls[-1] if calls else None


def most_frequent_api(train: Sequence[Record]) -> str | None:
    """The most frequent gold API among training records (ties: alphabetical)."""
    counts = Counter(n for n in (gold_name(r.target) for r in train) if n)
    return min(counts, key=lambda n: (-counts[n], n)) if counts else None


def _bare(name: str | None) -> str:
    return f"{CALL_PREFIX}[{name}()]" if name else ""


def predictors(train: Sequence[Record]) -> dict[str, Callable[[Record], str]]:
    """Each baseline as record -> prediction text, given the block's training records."""
    frequent = most_frequent_api(train)
    return {
        "always-toolsearcher": lambda r: _bare(TOOL_SEARCHER),
        "most-frequent-api": lambda r: _bare(frequent),
        "first-listed-api": lambda r: _bare(first_listed_api(r)),
        "repeat-last-call": lambda r: last_call(r) or "",
    }


def baseline_rows(train: Mapping[str, Sequence[Record]], heldout: Mapping[str, Sequence[Record]]) -> list[dict[str, Any]]:
    """``baseline, block, metric, value, n`` rows (exact and name accuracy), per block and pooled (``all``)."""
    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[tuple[bool, bool]]] = {b: [] for b in BASELINES}
    for block, items in heldout.items():
        for baseline, predict in predictors(train.get(block, ())).items():
            scores = [score(predict(r), r.target) for r in items]
            pooled[baseline] += [(s.exact, s.name) for s in scores]
            rows += _rows(baseline, block, [(s.exact, s.name) for s in scores])
    for baseline, pairs in pooled.items():
        rows += _rows(baseline, "all", pairs)
    return rows


def _rows(baseline: str, block: str, pairs: Sequence[tuple[bool, bool]]) -> list[dict[str, Any]]:
    n = len(pairs)
    return [
        {"baseline": baseline, "block": block, "metric": metric, "n": n,
         "value": sum(p[i] for p in pairs) / n if n else None}
        for i, metric in enumerate(("exact", "name"))
    ]


def diagnostics(gold: str, prompt_text: str) -> dict[str, Any]:
    """What the prompt already carries of the gold call (see the module docstring)."""
    call = parse_gold(gold)
    name = call.name if call else None
    values = [v for v in (call.args.values() if call else ()) if v != ""]
    return {
        "target_kind": "toolsearcher" if name == TOOL_SEARCHER else "tool",
        "gold_name_in_prompt": bool(name) and name in prompt_text,
        "gold_values_in_prompt": all(v in prompt_text for v in values),
    }
