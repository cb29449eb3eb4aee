"""report.md's compute section: what each arm trained (steps, examples, tokens, FLOPs) and the one
confound each comparison of arms carries.

Presentation only, like :mod:`trajhpc.results.report`; every
number comes from the StudyResult's ``summary``, ``compute`` and ``paired`` tables.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from trajhpc.results.mdformat import _ci, _diff, _int, _lookup, _num, _sci, _table
from trajhpc.results.studyresult import StudyResult

_PARAMS_SOURCES = {"resources": "the counts each job recorded", "model table": "trajhpc's table of known models"}


def compute_section(result: StudyResult) -> list[str]:
    """## Compute: final tokens and FLOPs per arm, counts after every stage, confounds, token-matched controls."""
    s = result.summary
    rows = []
    for arm in result.arms:
        sup, tot, flops = (_lookup(s, arm, m) for m in ("supervised_tokens", "total_tokens", "flops"))
        rows.append([
            arm, _int(sup.get("mean")), _num(sup.get("ratio_vs_A")), _int(tot.get("mean")),
            _num(tot.get("ratio_vs_A")), _sci(flops.get("mean")), _ci(_lookup(s, arm, "exact_per_m_supervised"), 2),
        ])
    header = ["arm", "supervised tokens", "ratio vs A", "total tokens", "ratio vs A", "training FLOPs",
              "exact per M supervised tokens"]
    sources = result.units["params_source"].drop_nulls().unique().sort().to_list()
    flops_note = (
        f"FLOPs ≈ (4·N_base + 6·N_LoRA) × padded tokens, with parameter counts from "
        f"{' and '.join(_PARAMS_SOURCES.get(s, s) for s in sources)}."
        if sources
        else "FLOPs are unknown: the jobs did not record parameter counts and the model is not in the table."
    )
    return [
        "## Compute", "", "Mean cumulative tokens per unit after the last stage; ratio = arm mean / A mean.", "",
        _table(header, rows), "", flops_note, "",
        *_stage_lines(result),
        *_confound_lines(result),
        "The interpolated exact @ budget (each unit's exact accuracy read along its cumulative tokens at the "
        "smallest final count of any unit) is in compute.csv and units.csv as exploratory only: it reads an arm "
        "with longer prompts before it has trained its last block, mixing compute with domain coverage.", "",
    ]


def _stage_lines(result: StudyResult) -> list[str]:
    """Cumulative steps, examples, tokens and FLOPs at the end of each stage, with the accuracy there."""
    c = result.compute
    if c.height == 0:
        return []
    rows = [
        [str(r["stage"]), r["arm"], str(r["units"] or 0), _int(r["steps"]), _int(r["examples"]),
         _int(r["supervised_tokens"]), _int(r["total_tokens"]), _sci(r["flops"]), _num(r["total_ratio_vs_A"]),
         _ci({"mean": r["acc_exact"], "ci_lo": r["acc_exact_ci_lo"], "ci_hi": r["acc_exact_ci_hi"]}),
         _num(r["acc_seen_exact"])]
        for r in c.sort("stage").to_dicts() if r["stage"] > 0
    ]
    return [
        "### Stage by stage (the same blocks trained)", "",
        "After stage k every sequential arm has trained the same k blocks (a joint arm's one stage trains them "
        "all): cumulative optimizer steps, examples seen, supervised and total tokens and FLOPs (mean per unit; "
        "– where the jobs did not record the count), the ratio of total tokens to A at that stage, exact accuracy "
        "over all blocks and over the blocks trained so far.", "",
        _table(["stage", "arm", "units", "steps", "examples", "supervised tokens", "total tokens", "FLOPs",
                "ratio vs A", "exact (all blocks)", "exact (trained blocks)"], rows),
        "",
    ]


def _final_counts(result: StudyResult) -> dict[str, dict[str, Any]]:
    """Arm -> its compute.csv row of the last stage."""
    last: dict[str, dict[str, Any]] = {}
    for r in result.compute.sort("stage").to_dicts():
        last[r["arm"]] = r
    return last


def matched_arms(arm: str) -> tuple[str, str] | None:
    """(its own condition's arm, the matched condition's arm) of a token-matched arm: ``A@B+docs-dialogue``
    -> (``A+docs-dialogue``, ``B+docs-dialogue``); None for an arm without ``@``."""
    if "@" not in arm:
        return None
    condition, rest = arm.split("@", 1)
    cut = min((i for i in (rest.find(":"), rest.find("+")) if i >= 0), default=len(rest))
    suffix = rest[rest.find("+"):] if "+" in rest else ""
    return condition + suffix, rest[:cut] + suffix


def control_confound(arm: str, counts: dict[str, dict[str, Any]]) -> str | None:
    """The one confound of a token-matched arm ``X@Y`` against its own condition X, from the examples
    each saw (None for an arm that is not token-matched)."""
    arms = matched_arms(arm)
    if arms is None:
        return None
    own, matched = arms
    seen, plain = (counts.get(a, {}).get("examples") for a in (arm, own))
    if seen is None or plain is None:
        return (f"it reaches {matched}'s token budget with more or fewer examples than {own}; "
                "the counts that say which are missing")
    steps, own_steps = (counts.get(a, {}).get("steps") for a in (arm, own))
    numbers = f"{seen:,.0f} examples seen against {own}'s {plain:,.0f}" + (
        f", {steps:,.0f} optimizer steps against {own_steps:,.0f}" if steps is not None and own_steps is not None else "")
    if seen > plain:
        more_steps = steps is not None and own_steps is not None and steps > own_steps
        return (f"{'more optimizer steps and ' if more_steps else ''}repetition of the same examples ({numbers}): "
                f"{own}'s prompts are shorter than {matched}'s")
    if seen < plain:
        return (f"fewer examples seen ({numbers}): it stops on a prefix of {own}'s step sequence at "
                f"{matched}'s budget, a confound that works against {own}")
    return "none in the counts: it saw as many examples as its own condition"


def _confound_lines(result: StudyResult) -> list[str]:
    """What each comparison of arms holds equal, and the one confound it carries."""
    counts = _final_counts(result)
    arms = set(result.arms)
    items = []
    if {"A", "B"} <= arms:
        items.append("B − A (plain): the same examples in the same optimizer steps; confound: B's longer prompts "
                     "(more total tokens and FLOPs for the same supervised tokens).")
    for arm in result.arms:
        confound = control_confound(arm, counts)
        if confound is not None:
            items.append(f"{arm} ({matched_arms(arm)[0]} trained to {matched_arms(arm)[1]}'s token budget at each "
                         f"stage): confound: {confound}.")
    out = ["### What each comparison controls", "", *(f"- {item}" for item in items), ""] if items else []
    if not any("@" in a for a in result.arms):
        out += ["No token-matched arm in this study: add `A@B` (A trained on B's token budget) and `B@A` (B "
                "stopped at A's) for compute controls that need no interpolation.", ""]
    p = result.paired.filter(pl.col("metric") == "exact") if result.paired.height else result.paired
    for arm in (a for a in result.arms if "@" in a):
        other = matched_arms(arm)[1]
        for r in p.filter(((pl.col("arm") == other) & (pl.col("baseline") == arm)) |
                          ((pl.col("arm") == arm) & (pl.col("baseline") == other))).to_dicts():
            out += [f"Compute control: {r['arm']} − {r['baseline']} in final exact accuracy {_diff(r)} over "
                    f"{r['pairs']} pairs ({arm} is trained to {other}'s token budget, reached within one batch).", ""]
    return out
