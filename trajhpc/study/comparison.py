"""The manifest's ``analysis`` key: how the aggregate reads the study, never what a job computes.

``analysis.primary`` declares the comparison the study is designed for (default: B − A
on final exact accuracy, sign-flip over units). It is not part of any job's spec, so
changing it changes no job id; ``trajhpc aggregate`` finds it through the study's
manifest (:func:`trajhpc.results.jobrecords.study_manifest`).
"""

from __future__ import annotations

from pydantic import field_validator, model_validator

from trajhpc.spec import StrictModel

# Metrics compared between arms on units matched by (seed, order) (trajhpc.results.tables), and so
# the metrics a primary comparison may name.
PAIRED_METRICS = ("exact", "name", "name_excl_toolsearcher", "exact_at_budget_supervised", "exact_at_budget_total")


class Primary(StrictModel):
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
    def _two_arms(self) -> "Primary":
        if self.arm == self.baseline:
            raise ValueError(f"arm and baseline are both {self.arm!r}: the primary comparison needs two arms")
        return self

    @property
    def label(self) -> str:
        return f"{self.arm} − {self.baseline}"


class Analysis(StrictModel):
    """How the aggregate reads the study (``analysis:`` in the manifest)."""

    primary: Primary = Primary()


DEFAULT_PRIMARY = Primary()
