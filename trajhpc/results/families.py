"""The declared analysis applied: the family of every row of paired.csv, and the pre-registration check.

The manifest's ``analysis`` (trajhpc.study.comparison) sorts the rows into three families:

* ``primary``: the comparison the study is designed for, sign-flip over units, tested at full
  level (its ``p_holm`` is its own p);
* ``secondary``: the rows ``analysis.secondary`` declares; Holm adjusts within them only;
* ``exploratory``: every other row, reported unadjusted with ``p_holm`` empty: a lead, not a finding.

``trajhpc submit`` records the analysis in each job's submission.json; an aggregate whose
analysis differs from a recorded one says so (:func:`check_preregistration`), showing both.
"""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl
from pydantic import ValidationError

from trajhpc.results import itemstats
from trajhpc.results.itemtables import ITEM_TEST
from trajhpc.results.studyresult import StudyResult
from trajhpc.study.comparison import ITEM, SIGN_FLIP, Analysis, Comparison, canonical_json, document_sha256

FAMILIES = ("primary", "secondary", "exploratory")


def _matches(c: Comparison) -> pl.Expr:
    return (pl.col("arm") == c.arm) & (pl.col("baseline") == c.baseline) & (pl.col("metric") == c.metric)


def family(analysis: Analysis, level: str) -> pl.Expr:
    """The ``family`` column of a paired frame (arm, baseline, metric, test) whose rows are all unit-level
    sign-flip tests (``level`` ``sign-flip``) or all item-level tests (``item``). An item-level secondary
    holds only the item test (:data:`~trajhpc.results.itemtables.ITEM_TEST`): the McNemar test conditional
    on the units grows with repeated units, so it is never more than exploratory."""
    if level not in (SIGN_FLIP, ITEM):
        raise ValueError(f"unknown level {level!r}")
    headline = pl.col("test") == ITEM_TEST if level == ITEM else pl.lit(True)
    secondary = [_matches(s) & headline for s in analysis.secondary if s.test == level]
    primary = _matches(analysis.primary) if level == SIGN_FLIP else pl.lit(False)
    return (
        pl.when(primary).then(pl.lit("primary"))
        .when(pl.any_horizontal(secondary) if secondary else pl.lit(False)).then(pl.lit("secondary"))
        .otherwise(pl.lit("exploratory"))
        .alias("family")
    )


def holm_within_secondary(frame: pl.DataFrame) -> pl.Series:
    """``p_holm``: the primary's own p, Holm over the secondary rows only, empty for exploratory rows."""
    p, families = frame["p_value"].to_list(), frame["family"].to_list()
    adjusted = itemstats.holm([v if f == "secondary" else None for v, f in zip(p, families)])
    return pl.Series("p_holm", [v if f == "primary" else q for v, q, f in zip(p, adjusted, families)], pl.Float64)


def family_rank() -> pl.Expr:
    """Sort key: primary, secondary, exploratory."""
    return pl.col("family").replace_strict({f: i for i, f in enumerate(FAMILIES)}, return_dtype=pl.Int64)


# ---------------------------------------------------------------- pre-registration


def check_preregistration(result: StudyResult, recorded: Sequence[tuple[dict[str, Any], int]]) -> None:
    """Compare the analysis ``result`` applies with those ``submit`` recorded (document, jobs):
    any that differs sets ``analysis_changed`` and adds a note. Nothing recorded, nothing to compare."""
    result.recorded_analyses = tuple(recorded)
    current = canonical_json(result.analysis.document())
    differ = [jobs for doc, jobs in recorded if canonical_json(doc) != current]
    result.analysis_changed = bool(differ)
    if differ:
        result.notes.append(
            f"analysis changed after submission: {sum(differ)} job record(s) hold an analysis other than the one "
            "applied here; the families of paired.csv were not all declared before submission (report.md shows both)"
        )


def describe(document: dict[str, Any]) -> tuple[str, str]:
    """(primary, secondary) of an analysis document in words; one that no longer validates as JSON."""
    try:
        analysis = Analysis.model_validate(document)
    except ValidationError:
        return canonical_json(document), ""
    p = analysis.primary
    secondary = "; ".join(f"{s.label}, {s.metric} ({s.test})" for s in analysis.secondary) or "none"
    return f"{p.label}, {p.metric}", secondary


def versions(result: StudyResult) -> list[tuple[str, str, str, str, str]]:
    """(which, jobs, sha256 prefix, primary, secondary): each recorded analysis, then the one applied."""
    rows = [("recorded at submission", str(jobs), document_sha256(doc)[:12], *describe(doc))
            for doc, jobs in result.recorded_analyses]
    current = result.analysis.document()
    return rows + [("applied in this report", "–", document_sha256(current)[:12], *describe(current))]
