"""The tables that tables.tex and report.html show, as polars frames of formatted cells.

The cells come from report.md's own formatters, so a number reads the same in all three files;
:mod:`trajhpc.results.paper` renders them as LaTeX, :mod:`trajhpc.results.htmlreport` as HTML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from trajhpc.job.scoring import SCORE_KEYS
from trajhpc.results.ceilings import ceiling_cells, ceiling_note
from trajhpc.results.mdformat import METRIC_LABELS, _ci, _diff, _lookup, _num, _p
from trajhpc.results.studyresult import StudyResult
from trajhpc.results.tables import paired_table
from trajhpc.study.comparison import SIGN_FLIP


@dataclass(frozen=True)
class PaperTable:
    """One table: ``key`` names it (HTML id, LaTeX label), ``frame`` holds its cells as text."""

    key: str
    title: str
    frame: pl.DataFrame
    note: str = ""
    right: tuple[str, ...] = ()  # columns of numbers, aligned right


def _frame(header: list[str], rows: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame([dict(zip(header, r)) for r in rows], schema={h: pl.String for h in header})


def _has_retrieval(result: StudyResult) -> bool:
    # exact_retrieval comes from the prediction files: shown when some unit has it.
    return any(_lookup(result.summary, arm, "exact_retrieval").get("n") for arm in result.arms)


def _primary_row(result: StudyResult) -> dict[str, Any] | None:
    paired = paired_table(result)
    if paired.width == 0:
        return None
    rows = paired.filter(pl.col("primary") & (pl.col("test") == SIGN_FLIP)).to_dicts()
    return rows[0] if rows else None


def headline_sentence(result: StudyResult) -> str:
    """The primary comparison in one sentence: estimate, CI, p, units, and what the pairing holds fixed."""
    if result.units.height == 0:
        return "No complete job: nothing to compare yet."
    p = result.primary
    metric = METRIC_LABELS[p.metric]
    what = f"{p.label} in {metric}" if "@" in metric else f"{p.label} in final {metric} accuracy"
    row = _primary_row(result)
    if row is None:
        return f"The primary comparison, {what}, is not in this study: it lacks arm {p.arm} or {p.baseline}."
    if not row["pairs"]:
        return f"The primary comparison, {what}, has no units of both arms with the same (seed, order): no estimate."
    kind = "exact" if row["p_exact"] else f"Monte Carlo, {result.resamples:,} draws"
    return (f"Primary comparison: {what} is {_diff(row)} (mean paired difference in accuracy, a fraction of the "
            f"held-out calls, with its 95% bootstrap CI), p = {_num(row['p_value'], 4)} (two-sided sign-flip, "
            f"{kind}), over {row['pairs']} pairs of units matched on (seed, order), so seed and block order do not "
            "enter the difference.")


def headline_table(result: StudyResult) -> PaperTable:
    """Arms x exact / API name (/ exact with ToolSearcher by retrieval), with the pooled ceilings."""
    s = result.summary
    metrics = ["exact", *(["exact_retrieval"] if _has_retrieval(result) else []), "name"]
    header = ["arm", "units", *(METRIC_LABELS[m] for m in metrics), "ceiling exact / name (pooled)"]
    rows = [[arm, str(_lookup(s, arm, "exact").get("n", 0)), *(_ci(_lookup(s, arm, m)) for m in metrics),
             " / ".join(ceiling_cells(result.ceiling, result.units, arm))] for arm in result.arms]
    return PaperTable("headline", "Headline: final accuracy per arm", _frame(header, rows),
                      "Mean [95% bootstrap CI] over units; the ceiling and † as in Final accuracy.", tuple(header[1:]))


def summary_table(result: StudyResult) -> PaperTable:
    """report.md's Final accuracy table: every score of every arm with its CI, and the ceiling."""
    s = result.summary
    retrieval = ["exact_retrieval"] if _has_retrieval(result) else []
    metrics = [SCORE_KEYS[0], *retrieval, *SCORE_KEYS[1:]]
    header = ["arm", "units", "exact", *(["exact, ToolSearcher by retrieval"] if retrieval else []), "API name",
              "API name excl. ToolSearcher", "parse failures", "argument F1", "ceiling exact / name (pooled)"]
    rows = [[arm, str(_lookup(s, arm, "exact").get("n", 0)), *(_ci(_lookup(s, arm, m)) for m in metrics),
             " / ".join(ceiling_cells(result.ceiling, result.units, arm))] for arm in result.arms]
    note = ("Mean [95% percentile bootstrap CI] over units (one unit = one job: a seed and a block order); sd in "
            f"summary.csv. {ceiling_note(result.ceiling, result.units, result.arms)}")
    return PaperTable("summary", "Final accuracy", _frame(header, rows), note, tuple(header[1:]))


def paired_comparisons(result: StudyResult, metrics: Sequence[str] | None = None) -> PaperTable:
    """The unit-level comparisons (of ``metrics`` only, when given) and every row of a declared family,
    item-level ones included, each with its family."""
    paired = paired_table(result)
    rows = []
    if paired.height:
        unit = pl.col("test") == SIGN_FLIP
        if metrics is not None:
            unit = unit & pl.col("metric").is_in(list(metrics))
        # As report.md: the interpolated exact @ budget is exploratory, shown only when declared.
        unit = unit & ~pl.col("metric").str.starts_with("exact_at_budget")
        shown = paired.filter(unit | (pl.col("family") != "exploratory"))
        for r in shown.to_dicts():
            unit = r["test"] == SIGN_FLIP
            p = _p(r["p_value"], r["p_exact"]) if unit else f"{_num(r['p_value'], 4)} ({r['p_kind']})"
            rows.append([f"{r['arm']} − {r['baseline']}" + (" (primary)" if r["primary"] else ""),
                         METRIC_LABELS.get(r["metric"], r["metric"]), r["test"], r["family"], str(r["pairs"]),
                         _diff(r), p, _num(r["p_holm"], 4)])
    header = ["comparison", "metric", "test", "family", "pairs", "mean difference [95% CI]", "p", "p (Holm)"]
    note = ("arm − baseline on units matched by (seed, order); p two-sided, unadjusted; p (Holm) within the "
            "secondary family only (the primary is not adjusted, exploratory rows are leads, not findings). "
            "(MC): Monte Carlo p. "
            + ("Item-level rows outside a declared family: paired.csv." if metrics is None else
               "Other metrics' rows and item-level rows outside a declared family: paired.csv."))
    return PaperTable("paired", "Paired comparisons", _frame(header, rows), note, ("pairs", header[5], "p", "p (Holm)"))


def factorial_effects(result: StudyResult) -> PaperTable | None:
    """The factorial decompositions (factorial.csv), or None when the study has none."""
    if result.factorial.height == 0:
        return None
    rows = [[r["family"], r["effect"], r["metric"],
             _ci({"mean": r["estimate"], "ci_lo": r["ci_low"], "ci_hi": r["ci_high"]}),
             f"{_num(r['p_value'], 4)} ({r['p_kind']})", str(r["n"])] for r in result.factorial.to_dicts()]
    header = ["family", "effect", "metric", "estimate [95% CI]", "p", "n"]
    note = ("position: A-slots − A, content: B − A-slots; calls, responses: main effects of keeping the earlier "
            "calls and responses, and their interaction; on the units present in every arm of the decomposition.")
    return PaperTable("factorial", "Factorial effects", _frame(header, rows), note, (header[3], "p", "n"))


def paper_metrics(result: StudyResult) -> tuple[str, ...]:
    """The metrics whose comparisons a paper's table shows: exact, API name and the primary's."""
    return tuple(dict.fromkeys(("exact", "name", result.primary.metric)))


def paper_tables(result: StudyResult, metrics: Sequence[str] | None = None) -> list[PaperTable]:
    """The tables of tables.tex and report.html, in order (none for a study without complete jobs);
    ``metrics`` narrows the paired comparisons' unit-level rows."""
    if result.units.height == 0:
        return []
    factorial = factorial_effects(result)
    return [summary_table(result), paired_comparisons(result, metrics), *([factorial] if factorial else [])]
