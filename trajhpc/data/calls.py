"""API calls as API-Bank writes them, ``[Name(key='value', ...)]``, parsed out of text.

Extraction follows upstream API-Bank: the first ``[Name(`` whose line also holds a
closing ``)]``. Arguments are parsed with :mod:`ast` when the call is valid Python and
with a tolerant scanner otherwise, because ~8% of the gold strings are not valid Python
(``attendees='['John']'``, ``location=New York``). Both paths give the same result on
valid Python. Values are kept as whitespace-stripped strings.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Iterator

TOOL_SEARCHER = "ToolSearcher"

_CALL_START = re.compile(r"\[(\w+)\(")
_CALL_END = ")]"
# Where one keyword argument ends: before ", key=" (not "==") or at the end of the span.
_TERMINATOR = re.compile(r"\s*(?:,\s*\w+\s*=(?!=)|,?\s*$)")
_KEY = re.compile(r"\s*(\w+)\s*=(?!=)")
_NEXT_KEY = re.compile(r"\s*,\s*\w+\s*=(?!=)")
_OPEN_TO_CLOSE = {"[": "]", "{": "}", "(": ")"}
# Bracket-less call after the request prefix: 2 lv3 gold records are written this way.
_BARE_GOLD = re.compile(r"API-Request:\s*(\w+)\((.*)\)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Call:
    """A parsed call: API name and keyword arguments as stripped strings."""

    name: str
    args: dict[str, str]




def _candidates(text: str) -> tuple[str, list[str]] | None:
    """Name and candidate argument spans of the first ``[Name(...)]`` in ``text``.

    Spans run up to each ``)]`` on the call's line, shortest first (the last one is
    upstream's greedy span). None when no ``[Name(`` has a ``)]`` on its line.
    """
    for m in _CALL_START.finditer(text):
        line_end = text.find("\n", m.end())
        rest = text[m.end() : line_end if line_end >= 0 else len(text)]
        ends = [i for i in range(len(rest)) if rest.startswith(_CALL_END, i)]
        if ends:
            return m.group(1), [rest[:i] for i in ends]
    return None


def _choose_span(name: str, spans: list[str]) -> tuple[str, dict[str, str] | None]:
    """Pick the span: the first that is valid Python, else the first with balanced
    brackets (so a second call on the line is not swallowed), else the greedy one."""
    for span in spans:
        args = _parse_ast(name, span)
        if args is not None:
            return span, args
    for span in spans:
        if _balanced(span):
            return span, None
    return spans[-1], None


def _balanced(span: str) -> bool:
    # Quote-blind on purpose: the invalid gold strings nest quotes of one kind.
    depth = {"(": 0, "[": 0, "{": 0}
    closers = {v: k for k, v in _OPEN_TO_CLOSE.items()}
    for ch in span:
        if ch in depth:
            depth[ch] += 1
        elif ch in closers:
            depth[closers[ch]] -= 1
            if depth[closers[ch]] < 0:
                return False
    return not any(depth.values())


# ---------------------------------------------------------------- argument parsing


def _parse_ast(name: str, span: str) -> dict[str, str] | None:
    """Keyword arguments via ast, or None if ``[name(span)]`` is not one valid Python call."""
    source = f"[{name}({span})]"
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return None
    body = tree.body
    if not (
        isinstance(body, ast.List)
        and len(body.elts) == 1
        and isinstance(body.elts[0], ast.Call)
        and isinstance(body.elts[0].func, ast.Name)
    ):
        return None
    args: dict[str, str] = {}
    for kw in body.elts[0].keywords:
        if kw.arg is None:  # **kwargs: not a named argument
            continue
        node = kw.value
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value
        else:
            value = ast.get_source_segment(source, node) or ""
        args[kw.arg] = value.strip()
    return args


def _scan_args(span: str) -> dict[str, str]:
    """Tolerant keyword-argument scanner for spans that are not valid Python.

    Positional arguments are skipped (upstream ignores them too).
    """
    args: dict[str, str] = {}
    pos = 0
    while pos < len(span):
        if not span[pos:].strip(" ,"):
            break
        key_m = _KEY.match(span, pos)
        key = key_m.group(1) if key_m else None
        start = key_m.end() if key_m else pos
        start += len(span[start:]) - len(span[start:].lstrip())
        end = _value_end(span, start)
        if key is not None:
            args[key] = _value_text(span[start:end])
        if _NEXT_KEY.match(span, end) is None:  # end of the span
            break
        pos = span.index(",", end) + 1
    return args


def _terminators(span: str, start: int) -> Iterator[int]:
    """Positions >= start where a value may end (before ', key=' or at the end), lazily."""
    return (i for i in range(start, len(span) + 1) if _TERMINATOR.match(span, i))


def _value_end(span: str, start: int) -> int:
    """End of the value starting at ``start``.

    A quoted value ends at the first terminator right after a matching quote, so
    quotes of the other kind, apostrophes and nested same-kind quotes stay inside
    (``'[{'name': 'x'}]'``). A bracketed value ends at the first terminator after
    its closing bracket with brackets balanced. A bare value ends at the first
    terminator (``location=New York, date=...``).
    """
    first = span[start : start + 1]
    if first in ("'", '"'):
        for e in _terminators(span, start):
            raw = span[start:e].rstrip()
            if len(raw) >= 2 and raw.endswith(first):
                return e
    elif first in _OPEN_TO_CLOSE:
        for e in _terminators(span, start):
            raw = span[start:e].rstrip()
            if raw.endswith(_OPEN_TO_CLOSE[first]) and _balanced(raw):
                return e
        for e in _terminators(span, start):
            if span[start:e].rstrip().endswith(_OPEN_TO_CLOSE[first]):
                return e
    # The end of the span always terminates, so there is a first terminator.
    return next(_terminators(span, start))


def _value_text(raw: str) -> str:
    """Comparable text of a raw value: the string for a quoted value, else the source."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] in "'\"" and raw[-1] == raw[0]:
        try:
            value = ast.literal_eval(raw)  # decodes escapes like valid Python would
        except (SyntaxError, ValueError):
            value = raw[1:-1]
        if isinstance(value, str):
            return value.strip()
        return raw[1:-1].strip()
    return raw


def parse_call(text: str) -> Call | None:
    """The first ``[Name(...)]`` call in ``text``, or None if there is none.

    Surrounding text (``API-Request: ``, ``<|eot_id|>``, chatter) is ignored.
    """
    found = _candidates(text)
    if found is None:
        return None
    name, spans = found
    span, args = _choose_span(name, spans)
    return Call(name, args if args is not None else _scan_args(span))


def parse_failure_reason(text: str) -> str | None:
    """Why ``parse_call(text)`` finds no call, as one line; None when it finds one."""
    if parse_call(text) is not None:
        return None
    if not text.strip():
        return "empty output: no '[Name(...)]' call found"
    start = _CALL_START.search(text)
    if start is not None:
        return f"call '[{start.group(1)}(' is not closed by ')]' on the same line (truncated?)"
    bare = re.search(r"\b(\w+)\(.*\)", text)
    if bare is not None:
        return f"no '[Name(...)]' call found (brackets missing? saw '{bare.group(1)}(...)')"
    return "no '[Name(...)]' call found"


def parse_gold(gold: str) -> Call | None:
    """Gold calls: like predictions, plus the bracket-less ``API-Request: Name(...)`` form."""
    call = parse_call(gold)
    if call is not None:
        return call
    m = _BARE_GOLD.search(gold)
    if m is None:
        return None
    return parse_call(f"[{m.group(1)}({m.group(2)})]")


def call_names(text: str) -> list[str]:
    """The API names of the calls (``[Name(``) a text starts, in order; nothing is parsed further."""
    return _CALL_START.findall(text)


def gold_name(gold: str) -> str | None:
    """API name of a gold call (bracket-less gold accepted), for :func:`summarize`."""
    call = parse_gold(gold)
    return call.name if call else None
