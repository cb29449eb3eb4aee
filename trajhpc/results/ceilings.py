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
    return pl.DataFrame(rows, schema=SCHEMA) if rows else pl.DataFrame(schema=SCHEMA), notes


def _heldout(ceiling: pl.DataFrame, arm: str) -> dict[str, Any]:
    row = ceiling.filter((pl.col("arm") == arm) & (pl.col("split") == "heldout")) if ceiling.height else ceiling
    return row.row(0, named=True) if row.height else {}


def above_ceiling(ceiling: pl.DataFrame, units: pl.DataFrame, arm: str, metric: str) -> bool:
    """Whether some unit of ``arm`` has a pooled ``metric`` (exact, name) above the arm's held-out ceiling.

    No function of the prompt can score above it, so such a score means that identical prompts got
    different answers (e.g. batched generation's padding tipped a near tie) or that the ceiling was
    computed from other data than the jobs evaluated on: either way the two are not comparable.
    """
    limit, column = _heldout(ceiling, arm).get(f"ceiling_{metric}"), f"{metric}_pooled"
    if limit is None or column not in units.columns:
        return False
    top = units.filter(pl.col("arm") == arm)[column].max()
    return top is not None and top > limit + 1e-9  # type: ignore[operator]


def ceiling_cells(ceiling: pl.DataFrame, units: pl.DataFrame, arm: str) -> tuple[str, str]:
    """(exact, name) held-out ceiling of ``arm`` as report cells: ``–`` where ceiling.csv has none,
    marked ``†`` where a unit scored above it (:func:`above_ceiling`)."""
    row = _heldout(ceiling, arm)
    cells = []
    for metric in ("exact", "name"):
        value = row.get(f"ceiling_{metric}")
        mark = "†" if above_ceiling(ceiling, units, arm, metric) else ""
        cells.append("–" if value is None else f"{value:.3f}{mark}")
    return cells[0], cells[1]


def ceiling_note(ceiling: pl.DataFrame, units: pl.DataFrame, arms: Sequence[str]) -> str:
    """What the ceiling is, and what a ``†`` means when some cell has one."""
    marked = any(above_ceiling(ceiling, units, arm, m) for arm in arms for m in ("exact", "name"))
    return CEILING_NOTE + (" †: a unit of the arm scored above this ceiling, which no function of the prompt can "
                           "exceed: identical prompts got different answers, or the jobs evaluated other data "
                           "than the ceiling was computed from; do not read the score against it." if marked else "")
