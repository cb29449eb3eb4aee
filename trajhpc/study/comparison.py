"""The manifest's ``analysis`` key: how the aggregate reads the study, never what a job computes.

``analysis.primary`` declares the comparison the study is designed for (default: B − A
on final exact accuracy, sign-flip over units), tested at full level. ``analysis.secondary``
lists the comparisons declared in advance as secondary: Holm adjusts within them only, and
every other row of ``paired.csv`` is exploratory (trajhpc.results.families). None of it is
part of any job's spec, so changing it changes no job id; ``trajhpc submit`` records it
(:meth:`Analysis.document`, :func:`document_sha256`) in each job's ``submission.json``, so
the aggregate can tell an analysis changed after submission from one declared before.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Mapping, Sequence

from pydantic import ValidationError, field_validator, model_validator

from trajhpc.spec import StrictModel

# Metrics compared between arms on units matched by (seed, order) (trajhpc.results.tables), and so
# the metrics a declared comparison may name.
PAIRED_METRICS = (
    "exact", "name", "name_excl_toolsearcher", "exact_at_budget_supervised", "exact_at_budget_total", "exact_retrieval",
)
# What a secondary comparison tests: its unit-level sign-flip row, or its item-level row (the
# aggregate's item test, whose evidence does not grow with repeated units; the McNemar test
# conditional on the units is always exploratory).
SIGN_FLIP, ITEM = "sign-flip", "item"


class Comparison(StrictModel):
    """``arm − baseline`` in ``metric`` (final, over units matched by seed and order)."""

    arm: str = "B"
    baseline: str = "A"
    metric: str = "exact"

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in PAIRED_METRICS:
            raise ValueError(f"unknown metric {value!r}; use one of {', '.join(PAIRED_METRICS)}")
        return value

    @model_validator(mode="after")
    def _two_arms(self) -> "Comparison":
        if self.arm == self.baseline:
            raise ValueError(f"arm and baseline are both {self.arm!r}: a comparison needs two arms")
        return self

    @property
    def label(self) -> str:
        return f"{self.arm} − {self.baseline}"


class Primary(Comparison):
    """The primary comparison: its sign-flip over units, not adjusted."""


class Secondary(Comparison):
    """A secondary comparison: its unit-level sign-flip row (``test: sign-flip``, the default)
    or its item-level test (``test: item``); Holm adjusts over every row the family holds."""

    test: Literal["sign-flip", "item"] = SIGN_FLIP


class Analysis(StrictModel):
    """How the aggregate reads the study (``analysis:`` in the manifest)."""

    primary: Primary = Primary()
    secondary: tuple[Secondary, ...] = ()

    def document(self) -> dict[str, Any]:
        """The analysis as JSON, defaults filled: what ``submit`` records."""
        return self.model_dump(mode="json")

    def directions(self) -> list[tuple[str, str]]:
        """(arm, baseline) of every declared comparison, the primary first: paired.csv keeps them."""
        return [(c.arm, c.baseline) for c in (self.primary, *self.secondary)]


DEFAULT_PRIMARY = Primary()
DEFAULT_ANALYSIS = Analysis()


def canonical_json(document: Any) -> str:
    """Keys sorted, no spaces: equal documents give equal text, and so equal hashes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def document_sha256(document: Any) -> str:
    """sha256 of the canonical JSON of an analysis document (recorded beside it by ``submit``)."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def normalised(document: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded analysis document with today's defaults filled, so a key added since it was
    recorded does not read as a change; one that no longer validates is kept as it is."""
    try:
        return Analysis.model_validate(document).document()
    except ValidationError:
        return dict(document)


def analysis_problem(analysis: Analysis, arms: Sequence[str], primary_written: bool) -> tuple[str, str] | None:
    """The first (field, message) that makes ``analysis`` unusable with a manifest's ``arms``, or None.

    Declared arms must be arms of the manifest (the default primary is not checked: a study
    without B keeps working); a comparison belongs to one family; and two declared comparisons
    of the same two arms go the same way, since paired.csv compares each two arms in one direction.
    """
    p = analysis.primary
    named = [("analysis.primary", p)] if primary_written else []
    named += [(f"analysis.secondary.{i}", s) for i, s in enumerate(analysis.secondary)]
    for where, comparison in named:
        for key in ("arm", "baseline"):
            value = getattr(comparison, key)
            if value not in arms:
                return f"{where}.{key}", f"{key} {value!r} is not an arm of this manifest; use one of {', '.join(arms)}"
    seen: dict[tuple[str, str, str, str], str] = {(p.arm, p.baseline, p.metric, SIGN_FLIP): "analysis.primary"}
    way: dict[frozenset[str], tuple[tuple[str, str], str]] = {frozenset((p.arm, p.baseline)): ((p.arm, p.baseline),
                                                                                                "analysis.primary")}
    for i, s in enumerate(analysis.secondary):
        where = f"analysis.secondary.{i}"
        first = seen.setdefault((s.arm, s.baseline, s.metric, s.test), where)
        if first != where:
            return where, f"{s.label} in {s.metric} ({s.test}) is already {first}: a comparison is in one family"
        (arm, baseline), other = way.setdefault(frozenset((s.arm, s.baseline)), ((s.arm, s.baseline), where))
        if (arm, baseline) != (s.arm, s.baseline):
            return where, (f"{s.label} is {other} ({arm} − {baseline}) the other way round: paired.csv compares "
                           f"two arms in one direction; write arm: {arm}, baseline: {baseline}")
    return None
