"""What the tiny model pre-trains on: the bundled lv3 training records, copies of them with
the tools renamed, and short copy drills.

The study's question is whether a model uses the tool a ToolSearcher response names; held-out
dialogues call tools the training text never names (79 of 103 held-out tool calls under the
default split). A model that learns the lv3 records alone memorises their tool names and
never copies a name out of the prompt. Renaming every tool in a record to a made-up name
(made of the words of real tool names) makes copying the only way to predict the call, and
the drills (a record cut to its last two turns, responses cut after the description, no
system text) give that signal in few tokens. Pure functions; the training is in
:func:`trajhpc.job.models.build_tiny`.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.apibank import CALL_PREFIX, GENERATE_MARKER, Record
from trajhpc.data.calls import TOOL_SEARCHER, call_names

# The bundled API-Bank files whose training dialogues pre-train tiny (tokenizer and weights).
TINY_CORPUS = ("training-data/lv3-api-train.json",)

_WORD = re.compile(r"[A-Z][a-z]*|[a-z]+|\d+")
# A ToolSearcher response kept up to its description: "{'name': 'X', 'description': '...'}".
_NAME_AND_DESCRIPTION = re.compile(r"^(\{'name': '[^']*'(?:, 'description': '[^']*')?).*$", re.S)


def tiny_corpus() -> list[Record]:
    """The records tiny pre-trains on, in file order: those of :data:`TINY_CORPUS` that the
    default split (``heldout_fraction`` 0.2, the one every bundled manifest uses) trains on.

    The split is decided per dialogue by a hash of its key, whatever the blocks and caps,
    so no dialogue any such study holds out (evaluated or not, in any block) is in here;
    nor are the records whose gold call cannot be scored.
    """
    from trajhpc.data.splits import load_study_data
    from trajhpc.spec import DataSpec

    data = load_study_data(DataSpec(files=TINY_CORPUS))
    return sorted((r for block in data.blocks for r in data.train[block]), key=lambda r: (r.source, r.index))


def record_texts(records: Sequence[Record]) -> Iterator[str]:
    """System message, user message (the whole dialogue so far) and gold call of each record."""
    from trajhpc.data.conditions import condition_lines, system_text

    for record in records:
        yield system_text(record)
        yield "\n".join([*condition_lines(record, "B"), GENERATE_MARKER])
        yield record.target


# ---------------------------------------------------------------- renamed tools


def tool_names(record: Record) -> list[str]:
    """The tools a record calls (its history and its target), ToolSearcher aside, sorted."""
    calls = [record.target, *(t.call for t in record.history if t.call)]
    return sorted({name for call in calls for name in call_names(call)} - {TOOL_SEARCHER})


def name_words(records: Sequence[Record]) -> list[str]:
    """The CamelCase words of the tool names the records call, sorted: what made-up names are made of."""
    return sorted({word for r in records for name in tool_names(r) for word in _WORD.findall(name)})


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


def copy_drill(record: Record) -> Record | None:
    """The record cut to what copying a tool's name needs: its last two turns, each
    ToolSearcher response up to its description, no system text. None when the gold call
    is ToolSearcher (nothing to copy)."""
    if call_names(record.target)[:1] in ([], [TOOL_SEARCHER]):
        return None

    def cut(turn):
        if turn.role != "api" or not turn.call or not (turn.response or "").startswith("{'name'"):
            return turn
        response = _NAME_AND_DESCRIPTION.sub(r"\1}", turn.response)
        return dataclasses.replace(turn, text=f"{turn.call}->{response}", response=response)

    return dataclasses.replace(
        record, instruction="", api_descriptions=(), history=tuple(cut(t) for t in record.history[-2:])
    )


def copy_drills(records: Sequence[Record], copies: int, words: Sequence[str], rng: random.Random) -> list[Record]:
    """``copies`` passes over the records, each a drill of a renamed copy (records whose
    gold call is ToolSearcher give none)."""
    drills = []
    for _ in range(copies):
        for record in renamed_copies(records, words, rng):
            drill = copy_drill(record)
            if drill is not None:
                drills.append(drill)
    return drills


def phase_records(records: Sequence[Record], *, drill_passes: int, renamed_passes: int, seed: int) -> dict[str, list[Record]]:
    """What each pre-training phase trains on, in the order they run: ``drills`` (that many
    passes of :func:`copy_drills`), then ``dialogues`` (the records and that many renamed
    copies of each). One RNG, seeded, makes up every name."""
    rng, words = random.Random(seed), name_words(records)
    drills = copy_drills(records, drill_passes, words, rng)
    dialogues = list(records)
    for _ in range(renamed_passes):
        dialogues += renamed_copies(records, words, rng)
    return {"drills": drills, "dialogues": dialogues}


# ---------------------------------------------------------------- what the loss sees


@dataclass(frozen=True)
class LMExample:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def call_spans(text: str, start: int) -> list[tuple[int, int]]:
    """Character spans of the ``API-Request: [...]`` calls on the lines of ``text`` from ``start`` on
    (a history line's ``->response`` is not part of its call)."""
    spans, pos = [], 0
    for line in text.split("\n"):
        end = pos + len(line)
        if pos >= start and line.startswith(CALL_PREFIX + "["):
            arrow = line.find("]->")
            spans.append((pos, pos + arrow + 1 if arrow >= 0 else end))
        pos = end + 1
    return spans


def lm_examples(tokenizer: Any, records: Sequence[Record], *, max_seq_len: int, user_header: str) -> list[LMExample]:
    """Each record as the study renders it under condition B (the whole trajectory), with
    the loss on its API calls: every ``API-Request: [...]`` of the dialogue in the user
    message and the answer (the gold call and end of turn, as the study supervises it).
    The rest (instruction, ToolSearcher's description, user and AI turns, API responses)
    is context: predicting it would spend the small model on text no study scores."""
    from trajhpc.data.conditions import IGNORE_INDEX, render_texts, tokenize_examples

    out = []
    for record, example in zip(records, tokenize_examples(tokenizer, records, "B", max_seq_len=max_seq_len)):
        prompt, _ = render_texts(tokenizer, record, "B")
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
