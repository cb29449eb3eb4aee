"""`trajhpc data inspect`: a per-block summary of the study data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from trajhpc.data.apibank import TOOL_SEARCHER
from trajhpc.data.study import StudyData, load_study_data
from trajhpc.errors import TrajhpcError
from trajhpc.scoring import parse_call
from trajhpc.spec import BlocksSpec, DataSpec, format_validation_error

COLUMNS = ("block", "dialogues", "train", "held-out", "APIs", "ToolSearcher")


def block_rows(study: StudyData) -> list[dict[str, Any]]:
    """One row per block plus a ``total`` row: dialogues, train/held-out records,
    distinct target API names, share of ToolSearcher targets (None when no records)."""
    rows: list[dict[str, Any]] = []
    all_names: list[str] = []
    for block in study.blocks:
        records = study.train[block] + study.heldout[block]
        names = [call.name for r in records if (call := parse_call(r.target)) is not None]
        all_names += names
        rows.append(_row(block, study.dialogues[block], len(study.train[block]), len(study.heldout[block]), names))
    total_train = sum(len(v) for v in study.train.values())
    total_heldout = sum(len(v) for v in study.heldout.values())
    rows.append(_row("total", sum(study.dialogues.values()), total_train, total_heldout, all_names))
    return rows


def _row(block: str, dialogues: int, train: int, heldout: int, names: Sequence[str]) -> dict[str, Any]:
    return {
        "block": block,
        "dialogues": dialogues,
        "train": train,
        "heldout": heldout,
        "api_names": len(set(names)),
        "toolsearcher_share": names.count(TOOL_SEARCHER) / len(names) if names else None,
    }


def render_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """The rows as a rich table; the last row (total) is set off by a line."""
    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "block" else "right", no_wrap=True)
    for i, row in enumerate(rows):
        share = row["toolsearcher_share"]
        table.add_row(
            row["block"],
            str(row["dialogues"]),
            str(row["train"]),
            str(row["heldout"]),
            str(row["api_names"]),
            "-" if share is None else f"{share:.0%}",
            end_section=(i == len(rows) - 2),
        )
    return table


def inspect_command(
    console: Console,
    *,
    source: Path | None,
    files: list[str] | None,
    blocks: str,
    heldout_fraction: float,
) -> None:
    """Load the data as a study would and print the per-block table."""
    if blocks not in ("lv3-rules", "scenario"):
        raise TrajhpcError(f"--blocks: unknown partition {blocks!r}; choose 'lv3-rules' or 'scenario'")
    if not 0.0 < heldout_fraction < 1.0:
        raise TrajhpcError(f"--heldout-fraction: must be between 0 and 1 (exclusive), got {heldout_fraction:g}")
    try:
        spec = DataSpec(
            root=str(source) if source is not None else None,
            files=tuple(files) if files else DataSpec().files,
            blocks=BlocksSpec(kind=blocks),  # type: ignore[arg-type]
            heldout_fraction=heldout_fraction,
        )
    except ValidationError as err:  # not expected after the checks above
        raise TrajhpcError(format_validation_error(err)) from None
    study = load_study_data(spec)
    title = f"{', '.join(spec.files)}: {spec.blocks.kind} blocks, held-out fraction {spec.heldout_fraction:g}"
    console.print(render_table(block_rows(study), title))
    if study.excluded:
        console.print(
            f"{study.n_excluded} record(s) excluded (gold call cannot be parsed): "
            + ", ".join(e.record.uid for e in study.excluded),
            highlight=False, soft_wrap=True,
        )
