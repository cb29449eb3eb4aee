"""`trajhpc data inspect --ceiling`: each arm's ceiling from the data alone, as a table.

Without a manifest the arms are the conditions that need no ``k``, on the given data; with one,
its arms as its jobs would run them (each arm's condition, ``k``, tool documentation and the
blocks its orders train on), the rows `trajhpc aggregate` writes to ``ceiling.csv``.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.table import Table

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.ceiling import arms_ceiling_rows, study_ceiling_rows
from trajhpc.data.splits import StudyData
from trajhpc.spec import DataSpec

# The conditions without a k, in the order of what the history keeps (nothing -> everything).
PLAIN_CONDITIONS = ("A", "A-slots", "calls-only", "responses-only", "B")
CAPTION = ("ceiling: the best score any model can reach when identical prompts (system + user message) must get "
           "one answer, the most frequent gold call (exact) or API name (name) per prompt; prompts: distinct "
           "prompts; shared: records whose prompt is also that of a record with another gold call")


def condition_rows(study: StudyData, data: DataSpec) -> list[dict[str, Any]]:
    """Train and held-out rows of every condition without a ``k`` on ``study`` (loaded from ``data``)."""
    return [row for c in PLAIN_CONDITIONS for row in study_ceiling_rows(c, c, None, data.tool_docs, study)]


def manifest_rows(manifest: Any) -> list[dict[str, Any]]:
    """The ``ceiling.csv`` rows of a manifest's arms, from the specs of its grid's jobs."""
    from trajhpc.study.grid import expand

    specs: dict[str, list[Any]] = {}
    for job in expand(manifest):
        specs.setdefault(job.spec.arm, []).append(job.spec)
    rows, failed = arms_ceiling_rows(specs)
    if failed:
        arm, why = failed[0]
        raise TrajhpcError(f"--ceiling: arm {arm}: the data cannot be loaded ({why})")
    return rows


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_ceiling_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """The rows as a rich table, one section per arm (whose name says its tool documentation)."""
    table = Table(title=title, caption=CAPTION, caption_justify="left")
    table.add_column("arm", overflow="fold")
    table.add_column("split", no_wrap=True)
    for col in ("records", "prompts", "shared", "exact", "name"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for i, row in enumerate(rows):
        last_of_arm = i == len(rows) - 1 or rows[i + 1]["arm"] != row["arm"]
        table.add_row(
            row["arm"], row["split"], str(row["records"]), str(row["distinct_prompts"]),
            str(row["shared_prompt_other_target"]), _rate(row["ceiling_exact"]), _rate(row["ceiling_name"]),
            end_section=last_of_arm and i != len(rows) - 1,
        )
    return table
