"""Validation errors that point into the file: a YAML node's field paths mapped to their lines,
and a pydantic ValidationError turned into one InputError naming file, line and field."""

from __future__ import annotations

import difflib
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from trajhpc.core.errors import InputError

# Tags of pydantic's discriminated unions start with this; they are no field of the file.
UNION_TAG = "~"


def line_map(
    node: yaml.Node, source: str, path: tuple[str | int, ...] = (), lines: dict | None = None
) -> dict[tuple[str | int, ...], int]:
    """Field path -> 1-based line of its key (mappings) or item (sequences).

    The tree has no aliases and a bounded depth (``yamlread``), so this walk is linear.
    """
    lines = {} if lines is None else lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = path + (key,)
            if key in seen:
                raise InputError(source, field_path(sub), "duplicate key", key_node.start_mark.line + 1)
            seen.add(key)
            line_map(value_node, source, sub, lines)
            lines[sub] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            line_map(item, source, path + (i,), lines)
    return lines


def field_path(parts: tuple[str | int, ...]) -> str:
    """``train.lr``; a key that is empty or holds control characters or dots shows quoted, keeping the message one line."""
    return ".".join(
        repr(p) if isinstance(p, str) and (not p or "." in p or any(ord(c) < 32 or ord(c) == 127 for c in p)) else str(p)
        for p in parts
    )


def line_of(path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    """Line of the longest prefix of ``path`` present in the YAML (a missing key -> its parent)."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, Union, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def valid_keys(root: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Field names allowed in the mapping at ``loc`` (walked from the ``root`` model)."""
    models: list[type[BaseModel]] = [root]
    for part in loc:
        for model in models:
            if isinstance(part, str) and part in model.model_fields:
                models = _models_in(model.model_fields[part].annotation)
                break
        # list indexes and dict keys don't change the candidate models
    return sorted({name for model in models for name in model.model_fields})


def to_input_error(
    err: ValidationError, root: type[BaseModel], source: str, lines: dict[tuple[str | int, ...], int]
) -> InputError:
    """The most useful pydantic error of validating ``root`` as one InputError naming the file, line and
    field (unknown keys first: they explain the rest; a close valid key is suggested)."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    # Drop union tags and pydantic's "[key]" marker (a dict key's own error) from the path.
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and (p.startswith(UNION_TAG) or p == "[key]")))
    field = field_path(loc) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required key is missing"
    elif first["type"] == "extra_forbidden":
        key = str(loc[-1])
        valid = valid_keys(root, loc[:-1])
        close = difflib.get_close_matches(key, valid, n=1) or [v for v in valid if key in v or v in key][:1]
        message = f"unknown key {key!r}" + (
            f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(valid)}"
        )
    return InputError(source, field, message, line_of(loc, lines))
