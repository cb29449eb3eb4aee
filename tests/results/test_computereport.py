"""The one confound the report names for each token-matched arm, from the counts compute.csv holds."""

from __future__ import annotations

from trajhpc.results.computereport import control_confound, matched_arms


def test_matched_arms_keep_the_suffix_of_docs_and_count():
    assert matched_arms("A@B") == ("A", "B")
    assert matched_arms("B@A:supervised") == ("B", "A")
    assert matched_arms("A@B+docs-dialogue") == ("A+docs-dialogue", "B+docs-dialogue")
    assert matched_arms("B") is None


def test_each_control_names_its_one_confound_from_the_counts():
    counts = {"A": {"examples": 64, "steps": 8}, "B": {"examples": 64, "steps": 8},
              "A@B": {"examples": 96, "steps": 12}, "B@A": {"examples": 40, "steps": 5}}
    assert control_confound("A@B", counts).startswith(
        "more optimizer steps and repetition of the same examples (96 examples seen against A's 64, "
        "12 optimizer steps against 8)")
    assert control_confound("B@A", counts).startswith("fewer examples seen (40 examples seen against B's 64")
    assert control_confound("B@A", counts).endswith("a confound that works against B")
    assert control_confound("B", counts) is None
    # without the plain arm's counts the report says it cannot tell, rather than guess
    assert "missing" in control_confound("A@B", {"A@B": counts["A@B"]})
