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


def _lv3_records():
    from trajhpc.data.apibank import bundled_root, load_records

    root = bundled_root()
    return [r for path in sorted((root / "training-data").glob("lv3-*api*.json")) for r in load_records(path, root=root)]


def test_the_corpus_is_level_1_and_2_and_holds_no_lv3_dialogue(corpus):
    assert tinycorpus.TINY_CORPUS == ("test-data/level-1-api.json", "test-data/level-2-api.json")
    assert {r.source for r in corpus} == set(tinycorpus.TINY_CORPUS) and len(corpus) > 500
    lv3 = _lv3_records()
    assert len(lv3) > 900
    # Neither an lv3 dialogue key (its first user utterance) nor its text is in the corpus.
    assert not tinycorpus.dialogue_texts(corpus) & tinycorpus.dialogue_texts(lv3)
    lv3_users = {t.text for r in lv3 for t in r.history if t.role == "user"}
    assert not {t.text for r in corpus for t in r.history if t.role == "user"} & lv3_users
    # Other tools than lv3's: ToolSearcher is the one tool both call.
    assert set().union(*map(tinycorpus.tool_names, corpus)) & set().union(*map(tinycorpus.tool_names, lv3)) == set()


def test_every_condition_renders_an_equal_share(corpus):
    from collections import Counter

    from trajhpc.spec import CONDITIONS

    assert {c for c, _ in tinycorpus.TINY_CONDITIONS} == set(CONDITIONS)
    phases = tinycorpus.phase_records(corpus, drill_passes=2, renamed_passes=1, full_drill_passes=1, seed=0)
    for name, items in phases.items():
        shares = Counter(c for _, c, _ in items)
        assert set(shares) == set(CONDITIONS) and max(shares.values()) - min(shares.values()) <= 1, (name, shares)
        assert {k for _, c, k in items if c == "last-k"} == {1}


def test_copy_drill_is_lv3_shaped_with_a_made_up_name(corpus):
    words = tinycorpus.name_words(corpus)
    record = next(r for r in corpus if r.step >= 1 and tinycorpus.copy_drill(r, words, random.Random(0), "B"))
    gold = re.search(r"\[(\w+)\(", record.target).group(1)
    drill = tinycorpus.copy_drill(record, words, random.Random(0), "B", full=True)
    short = tinycorpus.copy_drill(record, words, random.Random(0), "B")
    assert short.instruction == "" and short.api_descriptions == () and short.history[0] == drill.history[0]
    assert short.history[1].response.endswith("'}") and "input_parameters" not in short.history[1].response
    new = re.search(r"\[(\w+)\(", drill.target).group(1)
    assert new != gold and drill.target == record.target.replace(gold, new)
    assert drill.instruction == record.instruction and len(drill.api_descriptions) == 1
    assert drill.api_descriptions[0].startswith('{"name": "ToolSearcher"')
    user, search = drill.history
    assert user == [t for t in record.history if t.role == "user"][-1]
    assert search.call.startswith(f"[{SEARCHER}(keywords='") and search.text == f"{search.call}->{search.response}"
    # The response as lv3 writes one: the tool's whole description, a Python dict.
    assert search.response.startswith(f"{{'name': '{new}', 'description': '") and "'input_parameters': {" in search.response
    assert gold not in _text(drill)
    # Under a condition that shows no response, the made-up tool is described in the system text.
    hidden = tinycorpus.copy_drill(record, words, random.Random(0), "A", full=True)
    assert hidden.history == drill.history and len(hidden.api_descriptions) == 2
    assert f'"name": "{new}"' in hidden.api_descriptions[1]


def test_no_drill_when_the_gold_call_is_the_searcher(corpus):
    record = next(r for r in corpus if SEARCHER in r.target)
    assert tinycorpus.copy_drill(record, ["Made", "Up"], random.Random(0), "B") is None


def test_copy_drills_are_seeded(corpus):
    words = tinycorpus.name_words(corpus)
    assert "Get" in words and len(words) > 100 and words == sorted(set(words))
    first = tinycorpus.copy_drills(corpus[:80], 2, words, random.Random(0))
    again = tinycorpus.copy_drills(corpus[:80], 2, words, random.Random(0))
    other = tinycorpus.copy_drills(corpus[:80], 2, words, random.Random(1))
    assert first == again and first != other
    assert len(first) % 2 == 0 and len(first) > 0
    per_pass = len(first) // 2
    # Each pass makes up new names: the two drills of one record call different tools.
    assert first[0][0].target != first[per_pass][0].target


def test_the_loss_is_on_the_calls_the_condition_shows(corpus, tiny):
    from trajhpc.data.conditions import IGNORE_INDEX
    from trajhpc.job.models import START_HEADER

    _, tok = tiny
    record = _second_call(corpus)
    items = [(record, "B", None), (record, "A-slots", None)]
    b, slots = tinycorpus.lm_examples(tok, items, max_seq_len=4096, user_header=START_HEADER + "user")
    supervised = tok.decode([t for t in b.labels if t != IGNORE_INDEX])
    # The earlier ToolSearcher call and the gold call, never the response between them.
    assert supervised.startswith("API-Request: [ToolSearcher(") and record.target in supervised
    assert "'name'" not in supervised and "User:" not in supervised
    # A-slots' content-free line is no call: only the answer is supervised.
    assert tok.decode([t for t in slots.labels if t != IGNORE_INDEX]).startswith(record.target)


def test_phase_records_run_drills_then_dialogues(corpus):
    phases = tinycorpus.phase_records(corpus[:60], drill_passes=2, renamed_passes=1, full_drill_passes=1, seed=0)
    assert list(phases) == ["drills", "dialogues"]
    words = tinycorpus.name_words(corpus[:60])
    assert phases["drills"] == tinycorpus.copy_drills(corpus[:60], 2, words, random.Random(0))
    full = [r for r, _, _ in phases["dialogues"] if r.history and r.history[-1].response and "input_parameters" in
            r.history[-1].response and r.instruction and len(r.history) == 2]
    assert len(full) == len(phases["drills"]) // 2 > 0  # one pass of full drills, at the end
    dialogues = [r for r, _, _ in phases["dialogues"]][: -len(full)]
    assert dialogues[:60] == corpus[:60]  # the records themselves, then their renamed copies
    renamed = dialogues[60:]
    assert len(renamed) == sum(bool(tinycorpus.tool_names(r)) for r in corpus[:60]) > 0
    assert all(set(tinycorpus.tool_names(r)).isdisjoint(tinycorpus.tool_names(o)) for r, o in
               zip(renamed, [o for o in corpus[:60] if tinycorpus.tool_names(o)]))
    assert phases == tinycorpus.phase_records(corpus[:60], drill_passes=2, renamed_passes=1, full_drill_passes=1, seed=0)
