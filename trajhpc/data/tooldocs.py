"""The tool-documentation control (``data.tool_docs``): API descriptions added to the system message.

In lv3 the system message describes only ToolSearcher, so the next tool's name and
parameters reach the prompt only through ToolSearcher's *response*, which condition A
strips. Adding documentation separates "the prompt carries the information" from
"the trajectory supervises the call":

- ``dialogue``: the description of every API the dialogue calls (its history and its
  gold calls, over all of the dialogue's records, train and held-out alike);
- ``block``: the description of every API called anywhere in the dialogue's block.

Descriptions are JSON lines in the format of the prompts' own ``API descriptions``:
the upstream level-1/2 prompts' line where a tool appears there (the tools as they
are called), else one built from ``data/all_apis.csv`` (name, description,
input_parameters, output_parameters), else — for the lv3 tools, which the catalogue
does not list — the description a ToolSearcher response in the study's data gave
(the same dict, as JSON). APIs the record already describes are not repeated; names
are added in sorted order, so prompts do not depend on file order.
"""

from __future__ import annotations

import ast
import csv
import json
from dataclasses import replace
from functools import cache
from typing import Iterable, Mapping, Sequence

from trajhpc.data.apibank import CALL_PREFIX, Record, bundled_descriptions, bundled_root, description_name
from trajhpc.data.blocks import CATALOGUE_FILE
from trajhpc.data.calls import gold_name


def catalogue_line(name: str, api_info: str) -> str | None:
    """A description line from an ``all_apis.csv`` ``api_info`` cell (Python assignments), or None."""
    fields: dict[str, object] = {"name": name}
    try:
        tree = ast.parse(api_info)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                fields[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    if "description" not in fields:
        return None
    return json.dumps(fields, ensure_ascii=False, default=str)


@cache
def descriptions() -> dict[str, str]:
    """API name -> description line: upstream prompt lines first, then the bundled catalogue."""
    found = dict(bundled_descriptions())
    with (bundled_root() / CATALOGUE_FILE).open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            name = (row.get("类名") or "").strip()
            if name and name not in found:
                line = catalogue_line(name, row.get("api_info") or "")
                if line is not None:
                    found[name] = line
    return found


def searched_descriptions(records: Iterable[Record]) -> dict[str, str]:
    """API name -> description line, from the ToolSearcher responses in ``records`` (first one wins)."""
    found: dict[str, str] = {}
    for r in records:
        for t in r.history:
            if t.role != "api" or not t.response or gold_name(CALL_PREFIX + (t.call or "")) != "ToolSearcher":
                continue
            try:
                value = ast.literal_eval(t.response.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict) and isinstance(value.get("name"), str):
                # default=str: a Python literal may hold a set or bytes, which JSON lacks.
                found.setdefault(value["name"], json.dumps(value, ensure_ascii=False, default=str))
    return found


def called_apis(record: Record) -> set[str]:
    """Names of the APIs a record's history calls, and of its gold call."""
    names = {gold_name(CALL_PREFIX + (t.call or t.text)) for t in record.history if t.role == "api"}
    names.add(gold_name(record.target))
    return {n for n in names if n}


def described(record: Record) -> set[str]:
    """Names of the APIs the record's own system message already describes."""
    return {n for n in map(description_name, record.api_descriptions) if n}


def doc_names(blocks: Mapping[str, Sequence[Record]], mode: str) -> dict[str, tuple[str, ...]]:
    """Record uid -> API names whose documentation its system message gains under ``mode``."""
    if mode == "none":
        return {}
    per_dialogue: dict[str, set[str]] = {}
    for records in blocks.values():
        for r in records:
            per_dialogue.setdefault(r.dialogue_key, set()).update(called_apis(r))
    out: dict[str, tuple[str, ...]] = {}
    for records in blocks.values():
        per_block = set().union(*(per_dialogue[r.dialogue_key] for r in records)) if records else set()
        for r in records:
            names = per_dialogue[r.dialogue_key] if mode == "dialogue" else per_block
            out[r.uid] = tuple(sorted(names - described(r)))
    return out


def with_docs(
    records: Iterable[Record], names_by_uid: Mapping[str, Sequence[str]], searched: Mapping[str, str] | None = None
) -> list[Record]:
    """The records with the documentation of their names appended to their API descriptions
    (names without a known description are left out). ``searched``: descriptions from the
    data's ToolSearcher responses (:func:`searched_descriptions`), used after the catalogue."""
    lines = {**(searched or {}), **descriptions()}
    out = []
    for r in records:
        extra = tuple(lines[n] for n in names_by_uid.get(r.uid, ()) if n in lines)
        out.append(replace(r, api_descriptions=r.api_descriptions + extra) if extra else r)
    return out
