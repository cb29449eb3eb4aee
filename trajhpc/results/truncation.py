"""The report's note on shortened prompts: examples longer than ``train.max_seq_len`` lose their
oldest history turns (and, when even that is not enough, the start of the system message),
in training and in evaluation alike (:func:`trajhpc.data.conditions.tokenize_example`). The
jobs count them in tokens.json; an arm that trained or was evaluated on shortened prompts is
named here, since its scores describe those prompts, not the whole ones."""

from __future__ import annotations

from typing import Sequence

from trajhpc.results.jobrecords import OK, JobRecord


def truncation_notes(records: Sequence[JobRecord]) -> list[str]:
    """One note per arm whose jobs shortened any training example or held-out prompt (none otherwise)."""
    per_arm: dict[str, list[int]] = {}  # arm -> [train shortened, train examples, cut, eval shortened, eval examples]
    for r in records:
        if r.status != OK or r.tokens is None or r.spec is None:
            continue
        counts = per_arm.setdefault(r.spec.arm, [0, 0, 0, 0, 0])
        for stage in r.tokens.stages:
            counts[0] += stage.truncated_examples or 0
            counts[1] += stage.examples or 0
            counts[2] += stage.cut_examples or 0
        ev = r.tokens.evaluation
        if ev is not None:
            counts[2] += ev.cut_examples
            counts[3] += ev.truncated_examples
            counts[4] += ev.examples
    notes = []
    for arm, (train, n_train, cut, held, n_held) in per_arm.items():
        if not (train or held):
            continue
        line = (
            f"truncated prompts: arm {arm} trained on {train} of {n_train} examples and was evaluated on {held} of "
            f"{n_held} held-out prompts shortened to fit train.max_seq_len (oldest history turns left out"
        )
        line += f"; {cut} of them lost the start of the system message, its API descriptions" if cut else ""
        notes.append(line + "): its scores are for the shortened prompts (counts summed over its jobs, tokens.json)")
    return notes
