"""``--set key.path=value`` overrides of a manifest: parsed, merged into the file's mapping, and blamed.

A value is read as YAML with the manifest's own bounded reader (``seeds='[0, 1]'`` is a list,
``train.lr=1e-4`` a number), so an override can say whatever the file can. The merged mapping
is validated exactly like the file; an error at a field an override set names the override,
not a line of the file::

    --set train.lr=abc: train.lr: Input should be a valid number
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Sequence

from trajhpc.core.errors import InputError
from trajhpc.study.fielderrors import line_map
from trajhpc.study.yamlread import read_yaml

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Override:
    """One ``--set``: its text as given, the field path it sets, and the YAML value."""

    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def source(self) -> str:
        """How errors name it: ``--set train.lr=abc``."""
        return f"--set {self.text}"

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def parse_override(text: str) -> Override:
    """``key.path=value`` -> Override; a missing ``=``, an empty key part or bad YAML is an InputError naming it."""
    source = f"--set {text}"
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(source, None, "expected KEY=VALUE, e.g. --set train.lr=1e-4")
    parts = tuple(key.split("."))
    if any(not p.strip() or p != p.strip() for p in parts):
        raise InputError(source, None, f"{key!r} is not a dotted field path like train.lr")
    try:
        node, value = read_yaml(raw, source)
        if node is not None:
            line_map(node, source)  # a duplicate key in a mapping value is refused here too
    except InputError as err:
        # One line of text given on the command line: a line number says nothing.
        raise InputError(source, err.field, f"value: {err.message}") from None
    return Override(text, parts, value)


def parse_overrides(texts: Sequence[str] | None) -> list[Override]:
    """Every ``--set`` in the order given (a later one wins where two set the same field)."""
    return [parse_override(t) for t in texts or ()]


def apply_overrides(data: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """A copy of the manifest mapping with each override set in turn; missing mappings on the way are created.

    A path part that meets a list must be an index within it (``conditions.1=B``); one that meets
    a value that is neither a mapping nor a list is refused, naming the override.
    """
    out = copy.deepcopy(data)
    for o in overrides:
        node: Any = out
        for depth, part in enumerate(o.path):
            last = depth == len(o.path) - 1
            where = ".".join(o.path[: depth + 1])
            if isinstance(node, dict):
                if last:
                    node[part] = copy.deepcopy(o.value)
                    continue
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                elif not isinstance(child, (dict, list)):
                    raise InputError(o.source, where, f"is {_kind(child)}, not a mapping: cannot set {o.dotted}")
                node = child
            elif isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    parent = ".".join(o.path[:depth])
                    hint = f"use an index 0..{len(node) - 1}" if node else "set the whole list instead"
                    raise InputError(o.source, where, f"{parent} is a list of {len(node)}: {hint}")
                if last:
                    node[int(part)] = copy.deepcopy(o.value)
                else:
                    node = node[int(part)]
            else:  # a list item that is a single value (conditions.0=A, then conditions.0.k)
                parent = ".".join(o.path[:depth])
                raise InputError(o.source, parent, f"is {_kind(node)}, not a mapping: cannot set {o.dotted}")
    return out


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"the value {value!r}"


def set_paths(overrides: Sequence[Override]) -> set[FieldPath]:
    """Every field path an override writes, the paths inside mapping values included
    (``--set analysis='{primary: {...}}'`` writes ``analysis.primary``)."""
    out: set[FieldPath] = set()

    def walk(path: FieldPath, value: Any) -> None:
        out.add(path)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(path + (str(k),), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(path + (i,), v)

    for o in overrides:
        walk(tuple(int(p) if p.isdigit() else p for p in o.path), o.value)
    return out


def _as_path(field: str) -> FieldPath:
    return tuple(int(p) if p.isdigit() else p for p in field.split("."))


def blamed(err: InputError, overrides: Sequence[Override]) -> InputError:
    """``err`` (an error at a field of the merged manifest) named after the last override that set that
    field, or a field inside it, or the mapping holding it; unchanged when no override touched it."""
    if not err.field:
        return err
    path = _as_path(err.field)
    for o in reversed(overrides):
        mine = tuple(int(p) if p.isdigit() else p for p in o.path)
        n = min(len(mine), len(path))
        if mine[:n] == path[:n]:
            return InputError(o.source, err.field, err.message)
    return err


def jsonable(data: Any) -> Any:
    """The merged manifest as JSON values (YAML dates and the like become strings), for the submission record."""
    return json.loads(json.dumps(data, default=str, sort_keys=False))
