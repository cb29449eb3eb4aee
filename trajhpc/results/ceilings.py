"""``ceiling.csv``: each arm's ceiling on the data its jobs use, and the report's ceiling cells.

The ceiling (:mod:`trajhpc.data.ceiling`) is computed from the data alone, without any model: the
best score when identical prompts must get one answer. It is pooled over the items, so the report
sets it beside the pooled scores; under condition A it is far below the other arms', which is
part of what B − A measures.
"""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl

from trajhpc.data.ceiling import CEILING_COLUMNS, arms_ceiling_rows
from trajhpc.jobdir.documents import OK
from trajhpc.results.jobrecords import JobRecord

_TEXT, _RATES = ("arm", "tool_docs", "split"), ("ceiling_exact", "ceiling_name")
SCHEMA = {c: pl.String if c in _TEXT else pl.Float64 if c in _RATES else pl.Int64 for c in CEILING_COLUMNS}
CEILING_NOTE = ("ceiling: the best any model can score on the held-out items when identical prompts must get one "
                "answer (the most frequent gold call per prompt), from the data alone and pooled over the items "
                "(ceiling.csv); set it beside the pooled scores.")


def ceiling_frame(records: Sequence[JobRecord], units: pl.DataFrame, arms: Sequence[str]) -> tuple[pl.DataFrame, list[str]]:
    """``ceiling.csv`` rows (train and held-out per arm with units, in the order of ``arms``) from the
    jobs' specs (:func:`trajhpc.data.ceiling.arms_ceiling_rows`), and a note per arm whose data could
    not be loaded."""
    arm_of = dict(zip(units["job_id"].to_list(), units["arm"].to_list())) if units.height else {}
    specs: dict[str, list[Any]] = {}
    for r in records:
        if r.status == OK and r.spec is not None and r.path.name in arm_of:
            specs.setdefault(arm_of[r.path.name], []).append(r.spec)
    rows, failed = arms_ceiling_rows({arm: specs[arm] for arm in arms if arm in specs})
    notes = [f"no ceiling for arm {arm} in ceiling.csv: its data could not be loaded ({why})" for arm, why in failed]
    frame = pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA)
    return frame, notes + above_ceiling_notes(frame, units)


def above_ceiling_notes(ceiling: pl.DataFrame, units: pl.DataFrame) -> list[str]:
    """A note per arm and metric where some unit's pooled score is above the arm's held-out ceiling.

    No function of the prompt can score above it, so such a score means that identical prompts got
    different answers (e.g. batched generation's padding tipped a near tie) or that the ceiling was
    computed from other data than the jobs evaluated on: either way the two are not comparable.
    """
    notes = []
    held = ceiling.filter(pl.col("split") == "heldout") if ceiling.height else ceiling
    for row in held.to_dicts():
        for metric in ("exact", "name"):
            limit, column = row[f"ceiling_{metric}"], f"{metric}_pooled"
            if limit is None or column not in units.columns:
                continue
            top = units.filter(pl.col("arm") == row["arm"])[column].max()
            if top is not None and top > limit + 1e-9:
                notes.append(f"arm {row['arm']}: a unit's pooled {metric} accuracy ({top:.3f}) is above the arm's "
                             f"ceiling ({limit:.3f}), which no function of the prompt can exceed: identical prompts "
                             "got different answers, or the jobs evaluated other data than ceiling.csv was computed "
                             "from; do not read the score against that ceiling.")
    return notes


def ceiling_cells(ceiling: pl.DataFrame, arm: str) -> tuple[str, str]:
    """(exact, name) held-out ceiling of ``arm`` as report cells; ``–`` where ceiling.csv has none."""
    row = ceiling.filter((pl.col("arm") == arm) & (pl.col("split") == "heldout")) if ceiling.height else ceiling
    values = (row["ceiling_exact"][0], row["ceiling_name"][0]) if row.height else (None, None)
    return tuple("–" if v is None else f"{v:.3f}" for v in values)  # type: ignore[return-value]
