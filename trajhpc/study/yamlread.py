"""Bounded YAML for manifests: every cost is capped before anything walks the document.

A manifest is a small hand-written file, so the reader refuses what none needs and
what makes YAML's cost unbounded:

* anchors and aliases (``&a`` / ``*a``): ten levels of ``&a [*a, *a, ...]`` fit in
  600 bytes and stand for 10**10 nodes; a cycle (``&c [A, *c]``) never ends;
* nesting deeper than ``MAX_DEPTH`` (thousands of ``[`` exhaust Python's recursion);
* more than ``MAX_BYTES`` of text.

Each refusal is an ``InputError`` naming the file and the line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent

from trajhpc.core.errors import InputError

MAX_BYTES = 1_000_000
# The deepest real manifest path is data.blocks.rules.<i>.regex (5 levels).
MAX_DEPTH = 32


class _Refused(Exception):
    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses aliases, anchors and deep nesting as it meets them,
    before building (or recursing into) the node."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            raise _Refused(f"YAML aliases (*{event.anchor}) are not allowed in a manifest; write the value out", line)
        if isinstance(event, NodeEvent) and event.anchor is not None:
            raise _Refused(f"YAML anchors (&{event.anchor}) are not allowed in a manifest; write the value out", line)
        if not isinstance(event, CollectionStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", line)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def decode(raw: bytes, source: str) -> str:
    """UTF-8 text of a manifest file; a bad byte is refused with its line."""
    if len(raw) > MAX_BYTES:
        raise InputError(source, None, f"manifest is {len(raw):,} bytes, more than the {MAX_BYTES:,} allowed")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(source, None, f"not UTF-8 text ({err.reason}: byte 0x{raw[err.start]:02x})", line) from None


def _error_line(err: yaml.YAMLError, text: str) -> int | None:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(err, "position", None)  # the reader's errors (control characters) give an offset
    return text[:position].count("\n") + 1 if isinstance(position, int) else None


def read_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """(node tree with lines, plain data) of one YAML document, within the bounds above."""
    if len(text) > MAX_BYTES:
        raise InputError(source, None, f"manifest is {len(text):,} characters, more than the {MAX_BYTES:,} allowed")
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader already refuses control characters here
        node = loader.get_single_node()
        data = _construct(loader, node, source) if node is not None else None
    except _Refused as err:
        raise InputError(source, None, str(err), err.line) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(source, None, f"not valid YAML ({problem})", _error_line(err, text)) from None
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


def _construct(loader: _BoundedLoader, node: yaml.Node, source: str) -> Any:
    try:
        return loader.construct_document(node)
    except yaml.YAMLError:
        raise
    except Exception as err:  # noqa: BLE001 - PyYAML's constructors fail on some explicit tags
        # (`!!int` with no digits, `!!timestamp x`) with plain Python errors; the input is at fault.
        raise InputError(source, None, f"not valid YAML (a tagged value: {type(err).__name__})") from None
