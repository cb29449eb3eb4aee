"""Contract of trajhpc.job.tinycorpus: what the tiny model pre-trains on (renamed tools, copy drills)."""

from __future__ import annotations

import random
import re

import pytest

from trajhpc.data.calls import TOOL_SEARCHER as SEARCHER
from trajhpc.job import tinycorpus


@pytest.fixture(scope="module")
def corpus():
    return tinycorpus.tiny_corpus()


def _second_call(corpus):
    """A record whose gold call is a tool found by an earlier ToolSearcher call."""
    return next(r for r in corpus if SEARCHER not in r.target and any(t.call and SEARCHER in t.call for t in r.history))


def _text(record) -> str:
    return "\n".join([record.target, *record.api_descriptions, *(t.line() for t in record.history)])


def test_tool_names_are_the_called_tools_without_the_searcher(corpus):
    record = _second_call(corpus)
    names = tinycorpus.tool_names(record)
    gold = re.search(r"\[(\w+)\(", record.target).group(1)
    assert gold in names and SEARCHER not in names and names == sorted(names)


def test_renamed_replaces_every_whole_word_occurrence(corpus):
    record = _second_call(corpus)
    (old, *_) = tinycorpus.tool_names(record)
    mapping = {name: f"Made{i}Up" for i, name in enumerate(tinycorpus.tool_names(record))}
    out = tinycorpus.renamed(record, mapping)
    assert not re.search(rf"\b{old}\b", _text(out))
    assert mapping[old] in out.target or any(mapping[old] in (t.response or "") for t in out.history)
    # The ToolSearcher response names the new tool that the gold call then calls.
    response = next(t.response for t in out.history if t.call and SEARCHER in t.call)
    gold = re.search(r"\[(\w+)\(", out.target).group(1)
    assert f"'name': '{gold}'" in response
    # Nothing else moves: same text once the new names are mapped back.
    back = tinycorpus.renamed(out, {new: old for old, new in mapping.items()})
    assert back == record


def test_renamed_leaves_longer_words_alone(corpus):
    record = _second_call(corpus)
    gold = re.search(r"\[(\w+)\(", record.target).group(1)
    prefix = gold[:-1]  # a name that is a prefix of the gold one is not a whole word in it
    assert tinycorpus.renamed(record, {prefix: "Nope"}).target == record.target


def test_copy_drill_keeps_what_copying_needs(corpus):
    record = _second_call(corpus)
    drill = tinycorpus.copy_drill(record)
    assert drill.target == record.target
    assert drill.instruction == "" and drill.api_descriptions == ()
    assert drill.history == tuple(
        t if t.role != "api" else drill.history[i] for i, t in enumerate(record.history[-2:])
    )
    response = next(t.response for t in drill.history if t.call and SEARCHER in t.call)
    assert response.startswith("{'name': '") and response.endswith("'}") and "input_parameters" not in response
    searcher = next(t for t in drill.history if t.call and SEARCHER in t.call)
    assert searcher.text == f"{searcher.call}->{searcher.response}"


def test_no_drill_when_the_gold_call_is_the_searcher(corpus):
    record = next(r for r in corpus if SEARCHER in r.target)
    assert tinycorpus.copy_drill(record) is None


def test_copy_drills_are_seeded(corpus):
    words = tinycorpus.name_words(corpus)
    assert "Get" in words and len(words) > 100 and words == sorted(set(words))
    first = tinycorpus.copy_drills(corpus[:80], 2, words, random.Random(0))
    again = tinycorpus.copy_drills(corpus[:80], 2, words, random.Random(0))
    other = tinycorpus.copy_drills(corpus[:80], 2, words, random.Random(1))
    assert first == again and first != other
    per_pass = sum(tinycorpus.copy_drill(r) is not None for r in corpus[:80] if tinycorpus.tool_names(r))
    assert len(first) == 2 * per_pass > 0
    # Each pass makes up new names: the two drills of one record call different tools.
    assert first[0].target != first[per_pass].target


def test_the_loss_is_on_the_calls_only(corpus, tiny):
    from trajhpc.data.conditions import IGNORE_INDEX
    from trajhpc.job.models import START_HEADER

    _, tok = tiny
    record = _second_call(corpus)
    (example,) = tinycorpus.lm_examples(tok, [record], max_seq_len=4096, user_header=START_HEADER + "user")
    supervised = tok.decode([t for t in example.labels if t != IGNORE_INDEX])
    # The earlier ToolSearcher call and the gold call, never the response between them.
    assert supervised.startswith("API-Request: [ToolSearcher(") and record.target in supervised
    assert "'name'" not in supervised and "User:" not in supervised


def test_phase_records_run_drills_then_dialogues(corpus):
    phases = tinycorpus.phase_records(corpus[:60], drill_passes=2, renamed_passes=1, seed=0)
    assert list(phases) == ["drills", "dialogues"]
    words = tinycorpus.name_words(corpus[:60])
    assert phases["drills"] == tinycorpus.copy_drills(corpus[:60], 2, words, random.Random(0))
    dialogues = phases["dialogues"]
    assert dialogues[:60] == corpus[:60]  # the records themselves, then their renamed copies
    renamed = dialogues[60:]
    assert len(renamed) == sum(bool(tinycorpus.tool_names(r)) for r in corpus[:60]) > 0
    assert all(set(tinycorpus.tool_names(r)).isdisjoint(tinycorpus.tool_names(o)) for r, o in
               zip(renamed, [o for o in corpus[:60] if tinycorpus.tool_names(o)]))
    assert phases == tinycorpus.phase_records(corpus[:60], drill_passes=2, renamed_passes=1, seed=0)
