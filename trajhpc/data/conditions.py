"""Prompt conditions: which parts of the earlier trajectory a prompt keeps.

Each condition is one function from the parsed history to prompt lines; user and AI
turns and the API descriptions are always kept. ``tokenize_examples`` turns records
into token ids with the model's own chat template; training, evaluation and token
counting all go through it, so they see exactly the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from trajhpc.data.apibank import DESCRIPTIONS_MARKER, GENERATE_MARKER, Record, Turn
from trajhpc.errors import TrajhpcError

IGNORE_INDEX = -100  # label of tokens that are not supervised (PyTorch cross-entropy default)

HistoryFn = Callable[[Sequence[Turn], int | None], list[str]]


def condition_a(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """A: every earlier API call and its response is dropped."""
    return [t.line() for t in history if t.role != "api"]


def condition_b(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """B: the whole trajectory, verbatim."""
    return [t.line() for t in history]


def condition_calls_only(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """calls-only: earlier calls kept, their responses dropped (``API-Request: [..]``)."""
    return [t.line(with_response=False) for t in history]


def condition_last_k(history: Sequence[Turn], k: int | None = None) -> list[str]:
    """last-k: only the last ``k`` API lines (with responses) are kept."""
    assert k is not None  # checked by check_condition
    api_positions = [i for i, t in enumerate(history) if t.role == "api"]
    keep = set(api_positions[-k:]) if k > 0 else set()
    return [t.line() for i, t in enumerate(history) if t.role != "api" or i in keep]


CONDITIONS: dict[str, HistoryFn] = {
    "A": condition_a,
    "B": condition_b,
    "calls-only": condition_calls_only,
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


def build_messages(record: Record, condition: str, k: int | None = None) -> list[dict[str, str]]:
    """Chat messages: system (instruction + API descriptions), user (the dialogue under
    ``condition``, ending with ``Generate API Request:``), assistant (the gold call line)."""
    check_condition(condition, k)
    system = (record.instruction + DESCRIPTIONS_MARKER + "\n" + "\n".join(record.api_descriptions)).strip()
    user = "\n".join(CONDITIONS[condition](record.history, k) + [GENERATE_MARKER])
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user},
        {"role": "assistant", "content": record.target},
    ]


@dataclass(frozen=True)
class Example:
    """One tokenized training/evaluation example.

    ``input_ids = prompt_ids + target ids``; ``labels`` is IGNORE_INDEX on the prompt and
    the ids on the target (assistant content + end-of-turn). ``truncated`` counts
    prompt tokens cut from the left to fit ``max_seq_len``.
    """

    record: Record
    condition: str
    k: int | None
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    target: str
    truncated: int = 0

    @property
    def supervised_tokens(self) -> int:
        return len(self.input_ids) - len(self.prompt_ids)


def render_texts(tokenizer: Any, record: Record, condition: str, k: int | None = None) -> tuple[str, str]:
    """(prompt text with the generation header, supervised remainder) via the chat template.

    The remainder is what the full conversation adds after the prompt: the gold call and
    the end-of-turn token(s); trailing whitespace after them is not supervised.
    """
    messages = build_messages(record, condition, k)
    prompt = tokenizer.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise TrajhpcError(
            "the tokenizer's chat template does not render the conversation as prompt + answer "
            "(full text does not start with the generation prompt); use a model with a prefix-stable template"
        )
    remainder = full[len(prompt) :].rstrip()
    if record.target not in remainder:
        raise TrajhpcError("the tokenizer's chat template drops or rewrites the assistant answer")
    return prompt, remainder


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text; identical texts (records without earlier calls, repeated
    targets) are tokenized once."""
    unique = list(dict.fromkeys(texts))
    # The template already writes BOS and every special token: add none twice.
    ids = tokenizer(unique, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    by_text = dict(zip(unique, ids))
    return [by_text[t] for t in texts]


def tokenize_examples(
    tokenizer: Any,
    records: Sequence[Record],
    condition: str,
    *,
    k: int | None = None,
    max_seq_len: int,
) -> list[Example]:
    """Tokenize many records at once (one batched tokenizer call); see :func:`tokenize_example`."""
    check_condition(condition, k)
    if not records:
        return []
    texts = [render_texts(tokenizer, r, condition, k) for r in records]
    prompt_ids = _encode(tokenizer, [p for p, _ in texts])
    target_ids = _encode(tokenizer, [t for _, t in texts])
    examples: list[Example] = []
    for record, prompt, target in zip(records, prompt_ids, target_ids):
        room = max_seq_len - len(target)
        if room < 1:
            raise TrajhpcError(
                f"{record.uid}: the target alone is {len(target)} tokens, max_seq_len is {max_seq_len}; raise train.max_seq_len"
            )
        cut = max(0, len(prompt) - room)
        prompt = prompt[cut:]
        examples.append(
            Example(
                record=record,
                condition=condition,
                k=k,
                input_ids=tuple(prompt) + tuple(target),
                labels=(IGNORE_INDEX,) * len(prompt) + tuple(target),
                prompt_ids=tuple(prompt),
                target=record.target,
                truncated=cut,
            )
        )
    return examples


def tokenize_example(tokenizer: Any, record: Record, condition: str, *, k: int | None = None, max_seq_len: int) -> Example:
    """Tokenize one record under ``condition`` with the tokenizer's chat template.

    Prompt and answer are tokenized separately, so the prompt/target boundary is exact
    and ``prompt_ids`` is what generation starts from. If the example is longer than
    ``max_seq_len``, the prompt is truncated from the left (its start -- BOS, system
    text -- is lost first) and the whole target is kept; ``Example.truncated`` says
    how many tokens were cut.
    """
    return tokenize_examples(tokenizer, [record], condition, k=k, max_seq_len=max_seq_len)[0]
