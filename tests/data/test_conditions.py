"""Prompt conditions, chat-template tokenization with exact label masks, token counts."""

from __future__ import annotations

import pytest

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.apibank import CALL_PREFIX, GENERATE_MARKER, bundled_root, load_records
from trajhpc.data.conditions import (
    CONDITIONS,
    IGNORE_INDEX,
    build_messages,
    tokenize_example,
    tokenize_examples,
)
from trajhpc.data.tokens import TokenCounts, count_by_condition_block, count_tokens
from trajhpc.spec import CONDITIONS as SPEC_CONDITIONS

FILES = ("training-data/lv3-api-train.json", "test-data/level-1-api.json", "test-data/level-2-api.json")


@pytest.fixture(scope="module")
def records() -> list:
    root = bundled_root()
    return [r for name in FILES for r in load_records(root / name, root=root)]


@pytest.fixture(scope="module")
def with_calls(records) -> list:
    return [r for r in records if r.api_turns]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from trajhpc.job.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("tiny"))


def _user(record, condition, k=None) -> list[str]:
    return build_messages(record, condition, k)[1]["content"].split("\n")


def _calls(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(CALL_PREFIX)]


# ---------------------------------------------------------------- conditions


def test_registry_matches_the_spec():
    assert tuple(CONDITIONS) == SPEC_CONDITIONS


def test_messages_layout(records):
    record = records[5]
    system, user, assistant = build_messages(record, "B")
    assert [m["role"] for m in (system, user, assistant)] == ["system", "user", "assistant"]
    assert system["content"].startswith("Generate an API request in the format of")
    assert system["content"].endswith("API descriptions:\n" + record.api_descriptions[0])
    assert user["content"].endswith("\n" + GENERATE_MARKER) and user["content"].startswith("User: Book a wellness")
    assert assistant["content"] == record.target


def test_records_with_earlier_calls(with_calls):
    assert len(with_calls) == 568 + 187 + 86  # lv3, level-1, level-2 records with earlier calls


def test_a_drops_every_earlier_call_and_keeps_dialogue(with_calls):
    for record in with_calls:
        lines = _user(record, "A")
        assert not _calls(lines), record.uid
        assert lines[:-1] == [t.line() for t in record.history if t.role != "api"]


def test_b_keeps_the_trajectory_verbatim(with_calls):
    for record in with_calls:
        lines = _user(record, "B")
        assert _calls(lines) == [t.line() for t in record.api_turns], record.uid
        assert "\n".join(lines[:-1]) == "\n".join(t.line() for t in record.history)


def test_a_slots_keeps_one_fixed_line_per_earlier_call_in_place(with_calls):
    for record in with_calls:
        lines = _user(record, "A-slots")[:-1]
        assert lines == [t.line() if t.role != "api" else "API-Request: [omitted]" for t in record.history], record.uid
        assert lines.count("API-Request: [omitted]") == len(record.api_turns)
        # Nothing of a call or its response is left: only where the calls were.
        assert not any(t.call in "\n".join(lines) for t in record.api_turns)


def test_a_slots_tells_the_steps_of_one_user_turn_apart_where_a_cannot(records):
    """lv3's ToolSearcher call and the tool call answer the same user turn: under A the two
    prompts are identical, under A-slots they differ by the omitted line."""
    lv3 = [r for r in records if r.source.endswith("lv3-api-train.json")]
    by_prompt = {}
    for r in lv3:
        by_prompt.setdefault(("A", tuple(_user(r, "A"))), set()).add(r.step)
        by_prompt.setdefault(("A-slots", tuple(_user(r, "A-slots"))), set()).add(r.step)
    assert any(len(steps) > 1 for (c, _), steps in by_prompt.items() if c == "A")
    assert all(len(steps) == 1 for (c, _), steps in by_prompt.items() if c == "A-slots")


def test_calls_only_keeps_calls_without_responses(with_calls):
    for record in with_calls:
        calls = _calls(_user(record, "calls-only"))
        assert calls == [CALL_PREFIX + t.call for t in record.api_turns], record.uid
        assert all("]->" not in line and ")->" not in line for line in calls)
        assert not any(t.response in "\n".join(calls) for t in record.api_turns if len(t.response) > 20)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_last_k_keeps_exactly_the_last_k_calls(with_calls, k):
    for record in with_calls:
        lines = _user(record, "last-k", k)
        every = [t.line() for t in record.api_turns]
        assert _calls(lines) == (every[-k:] if k else []), record.uid
        assert [line for line in lines if not line.startswith(CALL_PREFIX)] == _user(record, "A")
    assert any(len(r.api_turns) > 3 for r in with_calls)  # so k=3 does drop calls somewhere


def test_conditions_keep_system_and_target(with_calls):
    record = with_calls[0]
    messages = {c: build_messages(record, c, 1 if c == "last-k" else None) for c in CONDITIONS}
    assert len({m[0]["content"] for m in messages.values()}) == 1
    assert {m[2]["content"] for m in messages.values()} == {record.target}


def test_rendered_conditions_golden(records, golden):
    """A level-1 and an lv3 record under every condition."""
    level1 = next(r for r in records if r.dialogue_key == "AddReminder-level-1-1.jsonl" and r.step == 1)
    lv3 = next(r for r in records if r.source.startswith("training-data") and r.step == 3)
    parts = []
    for record in (level1, lv3):
        for condition, k in (("A", None), ("A-slots", None), ("B", None), ("calls-only", None), ("last-k", 1)):
            parts.append(f"===== {record.uid} {condition} k={k}\n" + build_messages(record, condition, k)[1]["content"])
    text = "\n".join(parts) + "\n"
    golden("conditions.txt", text)


@pytest.mark.parametrize(
    "condition, k, message",
    [
        ("C", None, "condition: unknown 'C'; known: ['A', 'A-slots', 'B', 'calls-only', 'responses-only', 'last-k']"),
        ("last-k", None, "condition 'last-k' needs k >= 0, got None"),
        ("A", 2, "k is only used by condition 'last-k', not 'A'"),
    ],
)
def test_condition_errors(records, condition, k, message):
    with pytest.raises(TrajhpcError) as err:
        build_messages(records[0], condition, k)
    assert str(err.value) == message


# ---------------------------------------------------------------- tokenization


@pytest.mark.parametrize("condition, k", [("A", None), ("B", None), ("calls-only", None), ("last-k", 1)])
def test_labels_cover_exactly_the_target(tokenizer, with_calls, condition, k):
    for record in with_calls[:40] + with_calls[-40:]:
        ex = tokenize_example(tokenizer, record, condition, k=k, max_seq_len=4096)
        n_prompt = len(ex.prompt_ids)
        assert ex.input_ids[:n_prompt] == ex.prompt_ids and ex.truncated == 0
        assert ex.labels[:n_prompt] == (IGNORE_INDEX,) * n_prompt
        assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
        assert tokenizer.decode(ex.input_ids[n_prompt:]) == record.target + tokenizer.eos_token
        messages = build_messages(record, condition, k)
        prompt = tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(ex.prompt_ids) == prompt
        assert ex.input_ids.count(tokenizer.bos_token_id) == 1 and ex.input_ids[0] == tokenizer.bos_token_id
        assert ex.target == record.target and ex.record is record and (ex.condition, ex.k) == (condition, k)


def test_batch_equals_single(tokenizer, with_calls):
    batch = tokenize_examples(tokenizer, with_calls[:25], "B", max_seq_len=512)
    assert batch == [tokenize_example(tokenizer, r, "B", max_seq_len=512) for r in with_calls[:25]]
    assert tokenize_examples(tokenizer, [], "A", max_seq_len=512) == []


def _prompt_of(tokenizer, record, condition, drop=0, k=None) -> str:
    """The rendered prompt with the oldest ``drop`` history lines left out."""
    system, user, _ = build_messages(record, condition, k)
    lines = user["content"].split("\n")  # one line per history turn here (checked by the caller)
    user = {"role": "user", "content": "\n".join(lines[drop:])}
    return tokenizer.apply_chat_template([system, user], add_generation_prompt=True, tokenize=False)


def _long_record(with_calls):
    # Single-line turns, several earlier calls: dropping one turn drops one line.
    return next(
        r for r in with_calls
        if len(r.api_turns) >= 3 and all("\n" not in t.text for t in r.history) and len(r.history) >= 6
    )


def test_long_example_drops_the_oldest_turns_and_keeps_system_and_target(tokenizer, with_calls):
    record = _long_record(with_calls)
    full = tokenize_example(tokenizer, record, "B", max_seq_len=4096)
    system = build_messages(record, "B")[0]["content"]
    history = [t.line() for t in record.history]
    for limit in (len(full.input_ids) - 1, len(full.input_ids) - 60):
        ex = tokenize_example(tokenizer, record, "B", max_seq_len=limit)
        assert len(ex.input_ids) <= limit and ex.truncated >= 1 and ex.cut_tokens == 0
        prompt = tokenizer.decode(ex.prompt_ids)
        assert prompt == _prompt_of(tokenizer, record, "B", ex.truncated)  # re-rendered, not cut
        assert prompt.startswith(tokenizer.bos_token) and system in prompt
        assert history[ex.truncated] in prompt and history[ex.truncated - 1] not in prompt.split(system)[1]
        assert prompt.endswith(GENERATE_MARKER + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        # the fewest turns dropped: one turn less does not fit
        fewer = tokenizer(_prompt_of(tokenizer, record, "B", ex.truncated - 1), add_special_tokens=False)["input_ids"]
        assert len(fewer) + full.supervised_tokens > limit
        assert ex.input_ids[len(ex.prompt_ids):] == full.input_ids[len(full.prompt_ids):]
        assert ex.labels[len(ex.prompt_ids):] == full.labels[len(full.prompt_ids):]


def test_a_and_b_both_keep_the_system_prompt_when_truncated(tokenizer, with_calls):
    record = _long_record(with_calls)
    a = tokenize_example(tokenizer, record, "A", max_seq_len=4096)
    b = tokenize_example(tokenizer, record, "B", max_seq_len=4096)
    assert len(b.input_ids) > len(a.input_ids)
    limit = len(a.input_ids) - 5  # both conditions must shorten
    system_ids = tokenizer(
        tokenizer.apply_chat_template(build_messages(record, "A")[:1], tokenize=False), add_special_tokens=False
    )["input_ids"]
    for condition in ("A", "B"):
        ex = tokenize_example(tokenizer, record, condition, max_seq_len=limit)
        assert ex.truncated >= 1 and ex.cut_tokens == 0 and len(ex.input_ids) <= limit
        assert ex.prompt_ids[: len(system_ids)] == tuple(system_ids), condition  # BOS + system message intact


def test_prompt_too_long_without_any_turn_is_cut_from_the_left(tokenizer, with_calls):
    record = _long_record(with_calls)
    full = tokenize_example(tokenizer, record, "B", max_seq_len=4096)
    n_target = full.supervised_tokens
    bare = tokenizer(_prompt_of(tokenizer, record, "B", len(record.history)), add_special_tokens=False)["input_ids"]
    cut = tokenize_example(tokenizer, record, "B", max_seq_len=n_target + 10)
    assert cut.truncated == len(record.history) and cut.cut_tokens == len(bare) - 10
    assert len(cut.input_ids) == n_target + 10 and cut.prompt_ids == tuple(bare[-10:])
    assert cut.input_ids[10:] == full.input_ids[len(full.prompt_ids) :]
    with pytest.raises(TrajhpcError, match=r"the target alone is \d+ tokens, max_seq_len is 5"):
        tokenize_example(tokenizer, record, "B", max_seq_len=5)


def test_batch_with_truncation_equals_single(tokenizer, with_calls):
    batch = tokenize_examples(tokenizer, with_calls[:40], "B", max_seq_len=384)
    assert any(e.truncated for e in batch) and any(not e.truncated for e in batch)
    assert batch == [tokenize_example(tokenizer, r, "B", max_seq_len=384) for r in with_calls[:40]]


# ---------------------------------------------------------------- the date a template may render

DATE_TEMPLATES = {
    # Llama 3.2/3.3 style: today's date unless date_string is passed
    "date_string": (
        "{{ bos_token }}{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
        "{%- endif %}<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}\n"
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    # a template that always asks for today's date, in two formats
    "strftime_now": (
        "\n{{ bos_token }}Date: {{ strftime_now(\"%Y-%m-%d\") }} ({{ strftime_now('%d %B %Y') }})\n"
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}


@pytest.mark.parametrize("name, expected", [("date_string", "Today Date: 26 Jul 2024\n"),
                                            ("strftime_now", "\n<|begin_of_text|>Date: 2024-07-26 (26 July 2024)\n")])
def test_prompts_never_contain_todays_date(tokenizer, records, name, expected):
    import copy
    from datetime import datetime

    dated = copy.deepcopy(tokenizer)
    dated.chat_template = DATE_TEMPLATES[name]
    ex = tokenize_example(dated, records[0], "B", max_seq_len=4096)
    prompt = dated.decode(ex.prompt_ids)
    now = datetime.now()
    for fmt in ("%d %b %Y", "%Y-%m-%d", "%d %B %Y"):
        assert now.strftime(fmt) not in prompt
    assert expected in prompt
    assert prompt.endswith(GENERATE_MARKER + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert dated.decode(ex.input_ids[len(ex.prompt_ids):]) == records[0].target + "<|eot_id|>"
    # the template of the tokenizer itself is left alone
    assert dated.chat_template == DATE_TEMPLATES[name]


def test_unknown_strftime_format_fails_clearly(tokenizer, records):
    import copy

    dated = copy.deepcopy(tokenizer)
    dated.chat_template = "{{ strftime_now(fmt) }}" + DATE_TEMPLATES["strftime_now"]
    with pytest.raises(TrajhpcError, match="strftime_now"):
        tokenize_example(dated, records[0], "B", max_seq_len=4096)


def test_template_that_is_not_prefix_stable_is_refused(tokenizer, records):
    import copy

    odd = copy.deepcopy(tokenizer)
    # Writes the assistant header only as a generation prompt, never in the full conversation.
    odd.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}[{{ m['role'] }}]{{ m['content'] }}{% endif %}"
        "{% if m['role'] == 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    with pytest.raises(TrajhpcError, match="does not render the conversation as prompt \\+ answer"):
        tokenize_example(odd, records[0], "A", max_seq_len=4096)


# ---------------------------------------------------------------- token counts


def test_count_tokens(tokenizer, with_calls):
    sample = with_calls[:30]
    a = tokenize_examples(tokenizer, sample, "A", max_seq_len=4096)
    b = tokenize_examples(tokenizer, sample, "B", max_seq_len=4096)
    ca, cb = count_tokens(a), count_tokens(b)
    assert ca.examples == cb.examples == 30
    assert ca.prompt_tokens == sum(len(e.prompt_ids) for e in a)
    assert ca.prompt_tokens + ca.supervised_tokens == ca.total_tokens
    assert ca.supervised_tokens == cb.supervised_tokens  # same targets
    assert ca.prompt_tokens < cb.prompt_tokens  # B carries the earlier calls
    assert count_tokens([]) == TokenCounts()
    assert (ca + cb).to_dict() == {
        "examples": 60,
        "prompt_tokens": ca.prompt_tokens + cb.prompt_tokens,
        "supervised_tokens": 2 * ca.supervised_tokens,
        "total_tokens": ca.total_tokens + cb.total_tokens,
    }


def test_count_by_condition_block(tokenizer, with_calls):
    blocks = {"x": with_calls[:5], "y": with_calls[5:8], "empty": []}
    counts = count_by_condition_block(tokenizer, blocks, [("A", None), ("last-k", 1)], max_seq_len=4096)
    assert list(counts) == [("A", None), ("last-k", 1)]
    assert [c.examples for c in counts[("A", None)].values()] == [5, 3, 0]
    expected = count_tokens(tokenize_examples(tokenizer, with_calls[5:8], "last-k", k=1, max_seq_len=4096))
    assert counts[("last-k", 1)]["y"] == expected


# ---------------------------------------------------------------- piecewise encoding (speed, same ids)


def test_piecewise_encoding_gives_the_tokenizers_own_ids(tokenizer, records):
    from trajhpc.data.conditions import _encode, _split_pattern, render_texts

    assert _split_pattern(tokenizer) is not None
    texts = [render_texts(tokenizer, r, c)[0] for r in records[::50] for c in ("A", "B")]
    texts += ["", "<|eot_id|>", " <|eot_id|> x<|eot_id|><|eot_id|>  y ", "<|start_header_id|>user<|end_header_id|>\n\n hi"]
    assert _encode(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_piecewise_encoding_is_off_where_it_could_differ(tokenizer):
    import copy

    from tokenizers import AddedToken

    from trajhpc.data.conditions import _encode, _split_pattern

    odd = copy.deepcopy(tokenizer)
    odd.add_special_tokens({"additional_special_tokens": [AddedToken("<|x|>", lstrip=True)]})
    assert _split_pattern(odd) is None  # <|x|> eats the space before it
    text = "a <|x|> b <|eot_id|>"
    assert _encode(odd, [text]) == [odd(text, add_special_tokens=False)["input_ids"]]


def test_spec_knows_exactly_the_registered_conditions():
    # JobSpec needs the names as a static Literal; this keeps it in step with the registry.
    from trajhpc.data.conditions import CONDITIONS as REGISTRY
    from trajhpc.spec import CONDITIONS

    assert tuple(CONDITIONS) == tuple(REGISTRY)


# ---------------------------------------------------------------- responses-only (the 2 x 2 factorial)


def _hand_record():
    from trajhpc.data.apibank import Record, Turn

    history = (
        Turn("user", "Find a dentist."),
        Turn("api", "[ToolSearcher(keywords='dentist')]->{'name': 'DentistFinder'}",
             call="[ToolSearcher(keywords='dentist')]", response="{'name': 'DentistFinder'}"),
        Turn("ai", "Which city?"),
        Turn("api", "[Ping()]", call="[Ping()]", response=None),
        Turn("user", "Boston."),
    )
    return Record("hand.json", 0, "hand#0", 2, "Generate an API request", ("{}",), history,
                  "API-Request: [DentistFinder(city='Boston')]", None)


def test_responses_only_keeps_responses_and_drops_calls_exactly():
    lines = build_messages(_hand_record(), "responses-only")[1]["content"].split("\n")
    assert lines == [
        "User: Find a dentist.",
        "API-Response: {'name': 'DentistFinder'}",  # the call is gone, its response stays
        "AI: Which city?",
        "User: Boston.",  # a call without a response leaves no line
        GENERATE_MARKER,
    ]


def test_the_four_factorial_conditions_differ_only_in_the_api_lines():
    record = _hand_record()
    users = {c: _user(record, c) for c in ("A", "calls-only", "responses-only", "B")}
    assert users["A"] == ["User: Find a dentist.", "AI: Which city?", "User: Boston.", GENERATE_MARKER]
    assert _calls(users["calls-only"]) == ["API-Request: [ToolSearcher(keywords='dentist')]", "API-Request: [Ping()]"]
    assert _calls(users["B"]) == [
        "API-Request: [ToolSearcher(keywords='dentist')]->{'name': 'DentistFinder'}", "API-Request: [Ping()]"
    ]
    assert not _calls(users["responses-only"])
    for c, lines in users.items():
        assert [x for x in lines if x.startswith(("User:", "AI:"))] == users["A"][:-1], c


def test_responses_only_on_real_records(with_calls):
    for record in with_calls:
        lines = _user(record, "responses-only")
        assert not _calls(lines), record.uid
        responses = [t.response for t in record.history if t.role == "api" and t.response is not None]
        assert [x[len("API-Response: "):] for x in lines if x.startswith("API-Response: ")] == responses


def test_an_evaluation_prompt_keeps_room_for_the_answer_and_never_depends_on_the_gold(tokenizer, with_calls):
    """``reserve`` (eval.max_new_tokens) stands in for the target: the same rule, the same prompt whatever the gold."""
    import dataclasses

    from trajhpc.data.conditions import full_lengths

    record = _long_record(with_calls)
    (prompt_len, target_len), = full_lengths(tokenizer, [record], "B")
    full = tokenize_example(tokenizer, record, "B", max_seq_len=4096)
    assert (prompt_len, target_len) == (len(full.prompt_ids), full.supervised_tokens)
    limit, reserve = prompt_len + 20, 60  # the whole prompt leaves 20 tokens: less than the reserve
    ex = tokenize_examples(tokenizer, [record], "B", max_seq_len=limit, reserve=reserve)[0]
    assert len(ex.prompt_ids) <= limit - reserve and ex.truncated >= 1 and ex.cut_tokens == 0
    # The training rule at max_seq_len = limit - reserve + target gives the same prompt.
    trained = tokenize_example(tokenizer, record, "B", max_seq_len=limit - reserve + target_len)
    assert trained.prompt_ids == ex.prompt_ids
    longer_gold = dataclasses.replace(record, target=record.target[:-2] + ", extra='a much longer gold call')]")
    again = tokenize_examples(tokenizer, [longer_gold], "B", max_seq_len=limit, reserve=reserve)[0]
    assert again.prompt_ids == ex.prompt_ids
    fits = tokenize_examples(tokenizer, [record], "B", max_seq_len=prompt_len + reserve, reserve=reserve)[0]
    assert fits.prompt_ids == full.prompt_ids and not fits.is_truncated
    with pytest.raises(TrajhpcError, match=r"eval.max_new_tokens \(60\) leaves no room for a prompt in train.max_seq_len \(60\)"):
        tokenize_examples(tokenizer, [record], "B", max_seq_len=60, reserve=60)
