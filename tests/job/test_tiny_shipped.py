"""The shipped tiny model is what its builder makes: a rebuild (scripts/build_tiny.py's code path,
about 4 CPU-minutes on one core; 8 min wall on a shared 2-core machine) gives the same greedy
answers on the fixed probe set. Bytes may differ across CPUs (float sums), what the model does
may not."""

from __future__ import annotations

import json

import pytest

from trajhpc.job import models, tinycorpus, tinyprobe

pytestmark = pytest.mark.slow

AGREEMENT = 0.95  # share of the 100 probes whose greedy answers must be equal


def test_a_rebuild_answers_the_probes_as_the_shipped_model_does(tmp_path):
    built = tmp_path / models.SHIPPED_TINY.name
    built.mkdir()
    models.build_tiny(built, seed=0)
    items = tinyprobe.probe_items()
    assert len(items) == tinyprobe.PROBE_SIZE
    shipped = tinyprobe.greedy_answers(models.SHIPPED_TINY, items)
    rebuilt = tinyprobe.greedy_answers(built, items)
    assert tinyprobe.agreement(shipped, rebuilt) >= AGREEMENT, [(a, b) for a, b in zip(shipped, rebuilt) if a != b]
    # The same recipe and corpus, and the same tokenizer (trained deterministically on the same text).
    record, again = (json.loads((folder / models.PRETRAINING_FILE).read_text()) for folder in (models.SHIPPED_TINY, built))
    for key in ("recipe", "files", "records", "conditions", "drill_passes", "renamed_passes", "dialogues"):
        assert record[key] == again[key], key
    assert (built / "tokenizer.json").read_bytes() == (models.SHIPPED_TINY / "tokenizer.json").read_bytes()


def test_the_probe_set_is_fixed_and_spans_every_condition():
    items = tinyprobe.probe_items()
    assert [r.uid for r, _, _ in items] == [r.uid for r, _, _ in tinyprobe.probe_items()]
    assert {c for _, c, _ in items} == {c for c, _ in tinycorpus.TINY_CONDITIONS}
    assert all(r.source == tinyprobe.PROBE_FILE for r, _, _ in items)
    with pytest.raises(ValueError, match="differ in number"):
        tinyprobe.agreement(["a"], ["a", "b"])
    assert tinyprobe.agreement(["a", "b"], ["a", "c"]) == 0.5
