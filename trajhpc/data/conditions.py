"""Prompt conditions: which parts of the earlier trajectory a prompt keeps.

Each condition is one function from the parsed history to prompt lines; user and AI
turns and the API descriptions are always kept. ``tokenize_examples`` turns records
into token ids with the model's own chat template; training, evaluation and token
counting all go through it, so they see exactly the same prompts.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, Sequence

from trajhpc.core.errors import TrajhpcError
from trajhpc.core.gcpause import gc_paused
from trajhpc.data.apibank import DESCRIPTIONS_MARKER, GENERATE_MARKER, OMITTED_CALL_LINE, Record, Turn

IGNORE_INDEX = -100  # label of tokens that are not supervised (PyTorch cross-entropy default)

HistoryFn = Callable[[Sequence[Turn], int | None], list[str]]


def condition_a(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """A: every earlier API call and its response is dropped."""
    return [t.line() for t in history if t.role != "api"]


def condition_a_slots(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """A-slots: every earlier API turn becomes one fixed, content-free line (``API-Request: [omitted]``).

    The model sees how many calls came before and where, not which tool or what it returned:
    A-slots - A measures knowing the step, B - A-slots the content of the trajectory.
    """
    return [t.line() if t.role != "api" else OMITTED_CALL_LINE for t in history]


def condition_b(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """B: the whole trajectory, verbatim."""
    return [t.line() for t in history]


def condition_calls_only(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """calls-only: earlier calls kept, their responses dropped (``API-Request: [..]``)."""
    return [t.line(with_response=False) for t in history]


def condition_responses_only(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """responses-only: earlier responses kept as ``API-Response: <response>``, their calls dropped
    (an API turn that had no response leaves no line)."""
    lines = []
    for t in history:
        line = t.response_line() if t.role == "api" else t.line()
        if line is not None:
            lines.append(line)
    return lines


def condition_last_k(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """last-k: only the last ``k`` API lines (with responses) are kept."""
    if k is None:  # check_condition refuses this before a record is rendered
        raise TrajhpcError("condition 'last-k' needs k >= 0, got None")
    api_positions = [i for i, t in enumerate(history) if t.role == "api"]
    keep = set(api_positions[-k:]) if k > 0 else set()
    return [t.line() for i, t in enumerate(history) if t.role != "api" or i in keep]


CONDITIONS: dict[str, HistoryFn] = {
    "A": condition_a,
    "A-slots": condition_a_slots,
    "B": condition_b,
    "calls-only": condition_calls_only,
    "responses-only": condition_responses_only,
    "last-k": condition_last_k,
}


def check_condition(condition: str, k: int | None) -> None:
    """Raise a TrajhpcError for an unknown condition or a misused ``k``."""
    if condition not in CONDITIONS:
        raise TrajhpcError(f"condition: unknown {condition!r}; known: {list(CONDITIONS)}")
    if condition == "last-k" and (k is None or k < 0):
        raise TrajhpcError(f"condition 'last-k' needs k >= 0, got {k}")
    if condition != "last-k" and k is not None:
        raise TrajhpcError(f"k is only used by condition 'last-k', not {condition!r}")


def condition_lines(record: Record, condition: str, k: int | None = None) -> list[str]:
    """The history turns the user message shows under ``condition``, oldest first (one string per turn)."""
    check_condition(condition, k)
    return CONDITIONS[condition](record.history, k)


def system_text(record: Record) -> str:
    """The system message: instruction header + API descriptions (the same under every condition)."""
    return (record.instruction + DESCRIPTIONS_MARKER + "\n" + "\n".join(record.api_descriptions)).strip()


def build_messages(record: Record, condition: str, k: int | None = None, *, drop: int = 0) -> list[dict[str, str]]:
    """Chat messages: system (instruction + API descriptions), user (the dialogue under
    ``condition``, ending with ``Generate API Request:``), assistant (the gold call line).

    ``drop`` leaves out the oldest ``drop`` history turns of the user message (used to fit
    ``max_seq_len``; system message and target are never shortened).
    """
    lines = condition_lines(record, condition, k)
    return _messages(record, lines[drop:])


def _messages(record: Record, lines: Sequence[str]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_text(record)},
        {"role": "user", "content": "\n".join([*lines, GENERATE_MARKER])},
        {"role": "assistant", "content": record.target},
    ]


@dataclass(frozen=True)
class Example:
    """One tokenized training/evaluation example.

    ``input_ids = prompt_ids + target ids``; ``labels`` is IGNORE_INDEX on the prompt and
    the ids on the target (assistant content + end-of-turn). ``truncated`` is the number
    of oldest history turns left out of the user message to fit ``max_seq_len``;
    ``cut_tokens`` the prompt tokens cut from the left when even the prompt without any
    history turn did not fit (see :func:`tokenize_example`).
    """

    record: Record
    condition: str
    k: int | None
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    target: str
    truncated: int = 0
    cut_tokens: int = 0

    @property
    def supervised_tokens(self) -> int:
        return len(self.input_ids) - len(self.prompt_ids)

    @property
    def is_truncated(self) -> bool:
        """Whether the prompt was shortened in any way to fit ``max_seq_len``."""
        return self.truncated > 0 or self.cut_tokens > 0


# ---------------------------------------------------------------- chat template, with a fixed date

# Chat templates may render today's date (Llama 3.1: ``date_string``, default "26 Jul 2024";
# Llama 3.2/3.3: ``strftime_now("%d %b %Y")`` unless ``date_string`` is given). Prompts, token
# counts and resumed runs must not depend on the day a job runs: every render gets this date.
FIXED_DATE = datetime(2024, 7, 26)
DATE_STRING = "26 Jul 2024"
_STRFTIME_CALL = re.compile(r"""strftime_now\s*\(\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\)""")


@lru_cache(maxsize=64)
def fixed_date_template(template: str) -> str:
    """``template`` with ``strftime_now`` (transformers' template global returning today's
    date) shadowed by a macro that formats :data:`FIXED_DATE` instead.

    transformers passes template variables through a plain-data filter (a callable would
    arrive as a string), so the override is a Jinja macro put in front of the template. It
    knows the formats written literally in ``strftime_now("...")`` calls; any other format
    stops rendering with an error. Templates without ``strftime_now`` are returned unchanged.
    """
    if "strftime_now" not in template:
        return template
    formats = sorted({a or b for a, b in _STRFTIME_CALL.findall(template)})
    table = ", ".join(f"{json.dumps(f)}: {json.dumps(FIXED_DATE.strftime(f))}" for f in formats)
    message = json.dumps(
        "trajhpc renders chat templates with a fixed date; strftime_now needs a literal format, got: "
    )
    # `+%}` keeps trim_blocks from eating a newline the template itself starts with.
    return (
        "{%- macro strftime_now(format) -%}{%- set known = {" + table + "} -%}"
        "{%- if format in known -%}{{ known[format] }}{%- else -%}"
        "{{ raise_exception(" + message + " ~ format) }}{%- endif -%}{% endmacro +%}" + template
    )


class _Renderer:
    """Renders conversations with a tokenizer's chat template at :data:`FIXED_DATE`."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        try:
            template = tokenizer.get_chat_template()
        except ValueError as err:
            raise TrajhpcError(f"the tokenizer has no usable chat template ({str(err).splitlines()[0]})") from None
        self.template = fixed_date_template(template)

    def render(self, conversations: list[list[dict[str, str]]], *, add_generation_prompt: bool = False) -> list[str]:
        """Render several conversations (one batched call: same output as one call each)."""
        from jinja2.exceptions import TemplateError

        if not conversations:
            return []
        try:
            return self.tokenizer.apply_chat_template(
                conversations,
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                date_string=DATE_STRING,
            )
        except TemplateError as err:
            raise TrajhpcError(f"the tokenizer's chat template failed: {err}") from None

    def prompts(self, record: Record, lines_each: Sequence[Sequence[str]]) -> list[str]:
        """Prompt texts (with the generation header) of ``record`` with each of the given history lines."""
        return self.render([_messages(record, lines)[:2] for lines in lines_each], add_generation_prompt=True)

    def texts_many(self, items: Sequence[tuple[Record, Sequence[str]]]) -> list[tuple[str, str]]:
        conversations = [_messages(record, lines) for record, lines in items]
        prompts = self.render([m[:2] for m in conversations], add_generation_prompt=True)
        fulls = self.render(conversations)
        out = []
        for (record, _), prompt, full in zip(items, prompts, fulls):
            if not full.startswith(prompt):
                raise TrajhpcError(
                    "the tokenizer's chat template does not render the conversation as prompt + answer "
                    "(full text does not start with the generation prompt); use a model with a prefix-stable template"
                )
            remainder = full[len(prompt) :].rstrip()
            if record.target not in remainder:
                raise TrajhpcError("the tokenizer's chat template drops or rewrites the assistant answer")
            out.append((prompt, remainder))
        return out


def render_texts(tokenizer: Any, record: Record, condition: str, k: int | None = None) -> tuple[str, str]:
    """(prompt text with the generation header, supervised remainder) via the chat template.

    The remainder is what the full conversation adds after the prompt: the gold call and
    the end-of-turn token(s); trailing whitespace after them is not supervised. Rendered
    with a fixed date (:data:`DATE_STRING`), whatever day it is.
    """
    return _Renderer(tokenizer).texts_many([(record, condition_lines(record, condition, k))])[0]


# ---------------------------------------------------------------- token ids


_SPLIT_CACHE: "weakref.WeakKeyDictionary[Any, tuple[Any, tuple, re.Pattern[str] | None]]" = weakref.WeakKeyDictionary()


def _split_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex that cuts text at the tokenizer's added (special) tokens, when encoding the
    pieces one by one is guaranteed to give the same ids as encoding the whole text; else None.

    A fast tokenizer splits its input at added tokens before normalizing and
    pre-tokenizing, and treats the pieces independently, unless an added token eats
    neighbouring whitespace (lstrip/rstrip), matches only whole words or after
    normalization, or a Metaspace step prepends its marker only at the start of the
    text (``prepend_scheme: first``).
    """
    if not getattr(tokenizer, "is_fast", False):
        return None
    added = tuple(
        (t.content, bool(t.lstrip or t.rstrip or t.single_word or t.normalized))
        for t in tokenizer.added_tokens_decoder.values()
    )
    backend = tokenizer.backend_tokenizer
    cached = _SPLIT_CACHE.get(tokenizer)
    if cached is not None and cached[0] is backend and cached[1] == added:
        return cached[2]
    safe = (
        bool(added)
        and not any(unsafe for _, unsafe in added)
        and not re.search(r'"prepend_scheme"\s*:\s*"first"', backend.to_str())
    )
    pattern = None
    if safe:
        contents = sorted({content for content, _ in added if content}, key=len, reverse=True)
        pattern = re.compile("(" + "|".join(map(re.escape, contents)) + ")")  # longest first at each position
    try:
        _SPLIT_CACHE[tokenizer] = (backend, added, pattern)
    except TypeError:  # not weak-referenceable: just do not cache
        pass
    return pattern


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens added: the template wrote them).

    Rendered prompts repeat long pieces (the system text of a dataset's records, the
    same record under every condition): where it is exact (:func:`_split_pattern`),
    texts are cut at special tokens and each distinct piece is tokenized once.
    """
    pattern = _split_pattern(tokenizer)
    units = [pattern.split(t) for t in texts] if pattern is not None else [[t] for t in texts]
    unique = list(dict.fromkeys(u for parts in units for u in parts if u))
    ids = tokenizer(unique, add_special_tokens=False, return_attention_mask=False)["input_ids"] if unique else []
    by_text = dict(zip(unique, ids))
    return [[i for u in parts if u for i in by_text[u]] for parts in units]


def tokenize_examples(
    tokenizer: Any,
    records: Sequence[Record],
    condition: str,
    *,
    k: int | None = None,
    max_seq_len: int,
    reserve: int | None = None,
) -> list[Example]:
    """Tokenize many records at once (batched tokenizer calls); see :func:`tokenize_example`.

    ``reserve`` (evaluation: ``eval.max_new_tokens``) is kept free after the prompt in place of
    the target's tokens: an evaluation prompt fits ``max_seq_len - reserve`` by the same rule,
    so it never depends on the gold call and prompt plus generation stay within ``max_seq_len``.
    """
    check_condition(condition, k)
    if not records:
        return []
    renderer = _Renderer(tokenizer)
    lines = [condition_lines(r, condition, k) for r in records]
    prompt_ids, target_ids = _token_ids(tokenizer, renderer, records, lines)
    with gc_paused():  # millions of small ints and tuples, no cycles: skip GC passes over them
        return _examples(tokenizer, renderer, records, condition, k, lines, prompt_ids, target_ids, max_seq_len, reserve)


def _token_ids(tokenizer, renderer, records, lines) -> tuple[list[list[int]], list[list[int]]]:
    texts = renderer.texts_many(list(zip(records, lines)))
    with gc_paused():
        return _encode(tokenizer, [p for p, _ in texts]), _encode(tokenizer, [t for _, t in texts])


def full_lengths(tokenizer: Any, records: Sequence[Record], condition: str, *, k: int | None = None) -> list[tuple[int, int]]:
    """(prompt tokens, target tokens) of each record under ``condition`` before any truncation:
    :func:`tokenize_examples` shortens a prompt when prompt + target exceed ``max_seq_len``
    (with ``reserve``: when the prompt exceeds ``max_seq_len - reserve``)."""
    check_condition(condition, k)
    if not records:
        return []
    renderer = _Renderer(tokenizer)
    prompt_ids, target_ids = _token_ids(tokenizer, renderer, records, [condition_lines(r, condition, k) for r in records])
    return [(len(p), len(t)) for p, t in zip(prompt_ids, target_ids)]


def _examples(
    tokenizer, renderer, records, condition, k, lines, prompt_ids, target_ids, max_seq_len, reserve=None
) -> list[Example]:
    examples: list[Example] = []
    for record, record_lines, prompt, target in zip(records, lines, prompt_ids, target_ids):
        room = max_seq_len - (len(target) if reserve is None else reserve)
        if room < 1 and reserve is not None:
            raise TrajhpcError(
                f"eval.max_new_tokens ({reserve}) leaves no room for a prompt in train.max_seq_len ({max_seq_len}); "
                "lower eval.max_new_tokens or raise train.max_seq_len"
            )
        if room < 1:
            raise TrajhpcError(
                f"{record.uid}: the target alone is {len(target)} tokens, max_seq_len is {max_seq_len}; raise train.max_seq_len"
            )
        dropped = cut = 0
        if len(prompt) > room:
            prompt, dropped, cut = _fit_prompt(tokenizer, renderer, record, record_lines, room)
        examples.append(
            Example(
                record=record,
                condition=condition,
                k=k,
                input_ids=tuple(prompt) + tuple(target),
                labels=(IGNORE_INDEX,) * len(prompt) + tuple(target),
                prompt_ids=tuple(prompt),
                target=record.target,
                truncated=dropped,
                cut_tokens=cut,
            )
        )
    return examples


def _fit_prompt(
    tokenizer: Any, renderer: _Renderer, record: Record, lines: Sequence[str], room: int
) -> tuple[list[int], int, int]:
    """(prompt ids, history turns dropped, tokens cut) of the longest prompt that fits ``room``.

    Drops the oldest history turns one at a time (re-rendering the user message); if the
    prompt without any turn is still too long, cuts that one from the left.
    """
    candidates = renderer.prompts(record, [lines[drop:] for drop in range(1, len(lines) + 1)])
    for drop, ids in enumerate(_encode(tokenizer, candidates), start=1):
        if len(ids) <= room:
            return ids, drop, 0
    bare = ids if candidates else _encode(tokenizer, renderer.prompts(record, [[]]))[0]
    cut = len(bare) - room
    return bare[cut:], len(lines), cut


def tokenize_example(tokenizer: Any, record: Record, condition: str, *, k: int | None = None, max_seq_len: int) -> Example:
    """Tokenize one record under ``condition`` with the tokenizer's chat template.

    Prompt and answer are tokenized separately, so the prompt/target boundary is exact
    and ``prompt_ids`` is what generation starts from. The chat template renders a fixed
    date (:data:`DATE_STRING`), so prompts do not depend on the day.

    If the example is longer than ``max_seq_len``, the oldest history turns are left out
    of the user message, one at a time, and the prompt is rendered again, until it fits:
    the system message (instruction + API descriptions) and the whole target are always
    kept, under every condition alike. ``Example.truncated`` counts the turns left out.
    Only if the prompt without any history turn is still too long is it cut from the
    left (``Example.cut_tokens``), and the system message loses its beginning.

    Evaluation prompts follow the same rule with ``eval.max_new_tokens`` in place of the
    target (``tokenize_examples(..., reserve=)``): a held-out prompt is at most
    ``max_seq_len - max_new_tokens`` tokens, so the model never reads past the positions it
    was trained on, and what it is shown does not depend on the length of the gold call.
    """
    return tokenize_examples(tokenizer, [record], condition, k=k, max_seq_len=max_seq_len)[0]
