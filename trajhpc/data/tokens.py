"""Token counts of tokenized examples: the compute axis conditions are compared on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from trajhpc.data.apibank import Record
from trajhpc.data.conditions import IGNORE_INDEX, Example, tokenize_examples


@dataclass(frozen=True)
class TokenCounts:
    """Totals over a set of examples (prompt + supervised = total)."""

    examples: int = 0
    prompt_tokens: int = 0
    supervised_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: "TokenCounts") -> "TokenCounts":
        return TokenCounts(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.examples, self.prompt_tokens, self.supervised_tokens, self.total_tokens)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def count_tokens(examples: Iterable[Example]) -> TokenCounts:
    """Examples, prompt tokens, supervised (labelled) tokens and all tokens."""
    n = prompt = supervised = total = 0
    for ex in examples:
        n += 1
        prompt += len(ex.prompt_ids)
        supervised += len(ex.labels) - ex.labels.count(IGNORE_INDEX)
        total += len(ex.input_ids)
    return TokenCounts(n, prompt, supervised, total)


def count_by_condition_block(
    tokenizer: Any,
    blocks: Mapping[str, Sequence[Record]],
    conditions: Sequence[tuple[str, int | None]],
    *,
    max_seq_len: int,
) -> dict[tuple[str, int | None], dict[str, TokenCounts]]:
    """Token counts per (condition, k) and block, e.g. of ``StudyData.train``.

    ``conditions`` lists ``(name, k)`` pairs, ``k`` None except for ``last-k``.
    """
    return {
        (name, k): {
            block: count_tokens(tokenize_examples(tokenizer, records, name, k=k, max_seq_len=max_seq_len))
            for block, records in blocks.items()
        }
        for name, k in conditions
    }
