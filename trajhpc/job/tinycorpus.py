"""What the tiny model pre-trains on: the bundled level-1 / level-2 API-call files (other tools
than lv3's, the same call syntax), copies of them with the tools renamed, and short copy drills;
every example rendered under one of the study's conditions, in equal shares.

No lv3 record is in here: the lv3 domain blocks a study fine-tunes on are new domains to the
model (new tools, a new instruction text, ToolSearcher's lv3 response format), as they are to
Llama, so fine-tuning on a block has something to teach. Nor is the prompt format of one arm
favoured: each condition renders a sixth of the examples (last-k with k = 1).

What carried over from tiny-v3 (measured there): a model that sees only real tool names
memorises them and never copies a name out of the prompt. Renaming tools to made-up names (made
of words of real tool names and descriptions) makes copying the only way to predict the call;
the drills (a user request, a ToolSearcher call and its response, the call of the tool found,
renamed) give that signal in few tokens, in lv3's shape, response included (v3 needed some 5000
small drill steps before copying emerged; v4's first build, whose drills cut the response after
the description and had no system text, never copied a name in an lv3 prompt). Pure functions; the training is in
:func:`trajhpc.job.models.build_tiny`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.apibank import CALL_PREFIX, GENERATE_MARKER, OMITTED_CALL_LINE, Record, Turn, first_user_key
from trajhpc.data.calls import TOOL_SEARCHER, call_names

# The bundled API-Bank files tiny pre-trains on (tokenizer and weights); never an lv3 file.
TINY_CORPUS = ("test-data/level-1-api.json", "test-data/level-2-api.json")
# Each example is rendered under one of these (condition, k), in turn: equal shares.
TINY_CONDITIONS: tuple[tuple[str, int | None], ...] = (
    ("A", None), ("A-slots", None), ("B", None), ("calls-only", None), ("responses-only", None), ("last-k", 1),
)
# Conditions that show no API response: a drill under them names its tool in the system text
# instead (as level-1 prompts do), so that no drill asks for a name the prompt does not hold.
_HIDES_RESPONSES = frozenset({"A", "A-slots", "calls-only"})

_WORD = re.compile(r"[A-Z][a-z]*|[a-z]+|\d+")
_DESCRIPTION_WORD = re.compile(r"\b[a-z]{4,12}\b")
_SEARCHER_DESCRIPTION = (
    '{"name": "ToolSearcher", "description": "Searches for relevant tools in library based on the keywords.", '
    '"input_parameters": {"keywords": {"type": "str", "description": "The keyword to search for."}}, '
    '"output_parameters": {"best_matchs": {"type": "Union[List[dict], dict]", "description": "The best match tool(s)."}}}'
)


def tiny_corpus() -> list[Record]:
    """The records tiny pre-trains on, in file order: those of :data:`TINY_CORPUS` whose gold call
    can be scored."""
    from trajhpc.data.apibank import bundled_root, load_records
    from trajhpc.data.splits import exclusion_reason

    root = bundled_root()
    return [r for name in TINY_CORPUS for r in load_records(root / name, root=root) if exclusion_reason(r) is None]


def dialogue_texts(records: Sequence[Record]) -> set[str]:
    """What identifies a record's dialogue across files: its first user utterance (lv3's dialogue
    key) and its dialogue key (level-1/2's file name)."""
    return {key for r in records for key in (first_user_key(r.history), r.dialogue_key) if key}


def record_texts(records: Sequence[Record]) -> Iterator[str]:
    """System message, user message (under every condition) and gold call of each record."""
    from trajhpc.data.conditions import condition_lines, system_text

    for record in records:
        yield system_text(record)
        for condition, k in TINY_CONDITIONS:
            yield "\n".join([*condition_lines(record, condition, k), GENERATE_MARKER])
        yield record.target


# ---------------------------------------------------------------- renamed tools


def tool_names(record: Record) -> list[str]:
    """The tools a record calls (its history and its target), ToolSearcher aside, sorted."""
    calls = [record.target, *(t.call for t in record.history if t.call)]
    return sorted({name for call in calls for name in call_names(call)} - {TOOL_SEARCHER})


def name_words(records: Sequence[Record]) -> list[str]:
    """What made-up names are made of, sorted: the CamelCase words of the tool names the records
    call, and every word of their dialogues and API descriptions, capitalised. Many more words
    than the 50 tools have: with the tool words alone (the first v4 build), the model copied the
    first piece of an unseen lv3 name and finished it with a word it knew."""
    words = {word for r in records for name in tool_names(r) for word in _WORD.findall(name)}
    texts = (text for r in records for text in (*r.api_descriptions, *(t.text for t in r.history)))
    words |= {w.capitalize() for text in texts for w in _DESCRIPTION_WORD.findall(text.lower())}
    return sorted(words)


def made_up_names(names: Sequence[str], words: Sequence[str], rng: random.Random) -> dict[str, str]:
    """A new name of 2 to 4 of ``words`` for each of ``names`` (in order, so one RNG state gives one mapping)."""
    return {name: "".join(rng.choice(words) for _ in range(rng.randint(2, 4))) for name in names}


def renamed(record: Record, names: Mapping[str, str]) -> Record:
    """The record with each tool name (a whole word anywhere in it) replaced as ``names`` says."""
    if not names:
        return record
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b")

    def sub(text: str | None) -> str | None:
        return None if text is None else pattern.sub(lambda m: names[m.group(1)], text)

    history = tuple(
        dataclasses.replace(t, text=sub(t.text), call=sub(t.call), response=sub(t.response)) for t in record.history
    )
    return dataclasses.replace(
        record,
        history=history,
        target=sub(record.target),
        api_descriptions=tuple(sub(d) for d in record.api_descriptions),
    )


def renamed_copies(records: Sequence[Record], words: Sequence[str], rng: random.Random) -> list[Record]:
    """One copy of each record that calls a tool besides ToolSearcher, its tools made up."""
    return [renamed(r, made_up_names(names, words, rng)) for r in records if (names := tool_names(r))]


# ---------------------------------------------------------------- copy drills


def _description_of(record: Record, name: str) -> str | None:
    for line in record.api_descriptions:
        if f'"name": "{name}"' in line:
            return line
    return None


def copy_drill(record: Record, words: Sequence[str], rng: random.Random, condition: str, *, full: bool = False) -> Record | None:
    """The record cut to lv3's shape for copying a tool's name: the user's last request, a
    ToolSearcher call (keywords: the tool's own words) and its response, then the call of that
    tool, renamed. Short (``full=False``): the response is ``{'name': <made-up>, 'description':
    ...}`` and there is no system text. Full: the response is the tool's whole description as lv3
    writes it (``{'name': ..., 'description': ..., 'input_parameters': ...}``) and the system text
    is the record's instruction and ToolSearcher's description, as level-2 prompts have it. Under a
    condition that hides responses, the made-up tool's description is in the system text too.
    None when the gold call is ToolSearcher or names no tool this record describes."""
    names = call_names(record.target)[:1]
    if names in ([], [TOOL_SEARCHER]) or (description := _description_of(record, names[0])) is None:
        return None
    try:
        described = json.loads(description)
    except ValueError:
        return None
    if not isinstance(described, dict):
        return None
    name = names[0]
    new = made_up_names([name], words, rng)[name]
    if full:
        response = repr({**described, "name": new})
    else:
        response = repr({"name": new, "description": described.get("description", "")})
    keywords = " ".join(w.lower() for w in _WORD.findall(name))
    search = f"[{TOOL_SEARCHER}(keywords='{keywords}')]"
    user = next((t for t in reversed(record.history) if t.role == "user"), Turn("user", "Please help me."))
    shown = (_SEARCHER_DESCRIPTION,) if full else ()
    if condition in _HIDES_RESPONSES:
        shown += (description.replace(f'"{name}"', f'"{new}"'),)
    return dataclasses.replace(
        record,
        instruction=record.instruction if full else "",
        api_descriptions=shown,
        history=(user, Turn("api", f"{search}->{response}", call=search, response=response)),
        target=re.sub(rf"\b{re.escape(name)}\b", new, record.target),
    )


def copy_drills(
    records: Sequence[Record], passes: int, words: Sequence[str], rng: random.Random, *, full: bool = False,
    turn: int = 0,
) -> list[tuple[Record, str, int | None]]:
    """``passes`` passes over the records, each record's drill under the next condition of
    :data:`TINY_CONDITIONS` in turn, from the ``turn``-th: (drill, condition, k)."""
    drills = []
    for _ in range(passes):
        for record in records:
            condition, k = TINY_CONDITIONS[turn % len(TINY_CONDITIONS)]
            drill = copy_drill(record, words, rng, condition, full=full)
            if drill is not None:
                drills.append((drill, condition, k))
                turn += 1
    return drills


def phase_records(
    records: Sequence[Record], *, drill_passes: int, renamed_passes: int, full_drill_passes: int = 0, seed: int
) -> dict[str, list[tuple[Record, str, int | None]]]:
    """What each pre-training phase trains on, in the order they run, as (record, condition, k):
    ``drills`` (that many passes of short :func:`copy_drills`), then ``dialogues`` (the records,
    that many renamed copies of each, and ``full_drill_passes`` passes of full drills), conditions
    in turn. One RNG, seeded, makes up every name."""
    rng, words = random.Random(seed), name_words(records)
    drills = copy_drills(records, drill_passes, words, rng)
    dialogues = list(records)
    for _ in range(renamed_passes):
        dialogues += renamed_copies(records, words, rng)
    rendered = [(r, *TINY_CONDITIONS[i % len(TINY_CONDITIONS)]) for i, r in enumerate(dialogues)]
    rendered += copy_drills(records, full_drill_passes, words, rng, full=True, turn=len(rendered))
    return {"drills": drills, "dialogues": rendered}


# ---------------------------------------------------------------- what the loss sees


@dataclass(frozen=True)
class LMExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def call_spans(text: str, start: int) -> list[tuple[int, int]]:
    """Character spans of the ``API-Request: [...]`` calls on the lines of ``text`` from ``start`` on
    (a history line's ``->response`` is not part of its call; A-slots' ``[omitted]`` is no call)."""
    spans, pos = [], 0
    for line in text.split("\n"):
        end = pos + len(line)
        if pos >= start and line.startswith(CALL_PREFIX + "[") and not line.startswith(OMITTED_CALL_LINE):
            arrow = line.find("]->")
            spans.append((pos, pos + arrow + 1 if arrow >= 0 else end))
        pos = end + 1
    return spans


def lm_examples(
    tokenizer: Any, items: Sequence[tuple[Record, str, int | None]], *, max_seq_len: int, user_header: str
) -> list[LMExample]:
    """Each (record, condition, k) as the study renders it, with the loss on its API calls: every
    ``API-Request: [...]`` the condition shows in the user message and the answer (the gold call
    and end of turn, as the study supervises it). The rest (instruction, descriptions, user and AI
    turns, API responses) is context: predicting it would spend the small model on text no study
    scores."""
    from trajhpc.data.conditions import IGNORE_INDEX, render_texts, tokenize_examples

    # Batched per condition (one tokenizer call each), then back in the items' order.
    examples: dict[int, Any] = {}
    for condition, k in dict.fromkeys((c, k) for _, c, k in items):
        positions = [i for i, (_, c, kk) in enumerate(items) if (c, kk) == (condition, k)]
        batch = tokenize_examples(tokenizer, [items[i][0] for i in positions], condition, k=k, max_seq_len=max_seq_len)
        examples.update(zip(positions, batch))
    out = []
    for i, (record, condition, k) in enumerate(items):
        example = examples[i]
        prompt, _ = render_texts(tokenizer, record, condition, k)
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        if tuple(encoded["input_ids"]) != example.prompt_ids:  # the study's own ids, or nothing
            raise TrajhpcError(f"{record.uid}: tiny tokenizer offsets do not match the prompt's ids")
        spans = call_spans(prompt, prompt.index(user_header))
        labels = [
            token if any(a < e and s < b for s, e in spans) else IGNORE_INDEX
            for token, (a, b) in zip(example.prompt_ids, encoded["offset_mapping"])
        ]
        out.append(LMExample(example.input_ids, tuple(labels) + example.labels[len(labels):]))
    return out
