"""Formatting helpers of report.md's tables and numbers (shared by trajhpc.results.report and its sections)."""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl

# How each compared metric is named in every report.
METRIC_LABELS = {
    "exact": "exact",
    "name": "API name",
    "name_excl_toolsearcher": "API name excl. ToolSearcher",
    "exact_at_budget_supervised": "exact @ supervised-token budget",
    "exact_at_budget_total": "exact @ total-token budget",
    "exact_retrieval": "exact, ToolSearcher by retrieval",
}


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    text = f"{x:.{digits}f}"
    # -0.000 reads as a sign that is not there.
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _int(x: float | None) -> str:
    return "–" if x is None else f"{round(x):,}"


def _sci(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ci(row: dict[str, Any], digits: int = 3) -> str:
    """'mean [lo, hi]', or just the mean when there is no CI (fewer than 2 units)."""
    if row.get("mean") is None:
        return "–"
    ci = f" [{_num(row['ci_lo'], digits)}, {_num(row['ci_hi'], digits)}]" if row.get("ci_lo") is not None else ""
    return f"{_num(row['mean'], digits)}{ci}"


def _diff(row: dict[str, Any]) -> str:
    return _ci({"mean": row["mean_diff"], "ci_lo": row["ci_lo"], "ci_hi": row["ci_hi"]})


def _p(p: float | None, exact: bool) -> str:
    if p is None:
        return "–"
    return f"{p:.4f}" + ("" if exact else " (MC)")


def _cell(text: str) -> str:
    # A '|' or a line break inside a cell would break the markdown table.
    return " ".join(text.split("\n")).replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _lookup(summary: pl.DataFrame, arm: str, metric: str) -> dict[str, Any]:
    rows = summary.filter((pl.col("arm") == arm) & (pl.col("metric") == metric)).to_dicts()
    return rows[0] if rows else {}
