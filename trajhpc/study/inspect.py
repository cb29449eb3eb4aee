"""`trajhpc data inspect`: a per-block summary of the study data and, with ``--tokens``,
the B/A training-token ratio per level (file) and block and of every mix of levels."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from trajhpc.core.errors import TrajhpcError
from trajhpc.data.apibank import Record
from trajhpc.data.calls import TOOL_SEARCHER, parse_call
from trajhpc.data.splits import StudyData, load_study_data
from trajhpc.spec import BlocksSpec, DataSpec, HubSource

COLUMNS = ("block", "dialogues", "train", "held-out", "APIs", "ToolSearcher")
# B used 25.1% more training tokens than A in the pilot (README).
PILOT_RATIO = 1.251
# grid.yaml's train.max_seq_len: the default truncation of --tokens without a manifest.
DEFAULT_MAX_SEQ_LEN = 2048
# Mixes of up to this many levels are listed (2^n - 1 rows).
MAX_MIX_LEVELS = 6


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


def level_of(record: Record, files: Sequence[str]) -> str:
    """The ``files`` entry a record comes from, by its stem (``lv3-api-train``, ``level-1-api``)."""
    for name in files:
        entry = name.rstrip("/")
        if record.source == entry or record.source.startswith(entry + "/"):
            return Path(entry).stem
    return Path(record.source).stem


def token_rows(
    study: StudyData, tokenizer: Any, files: Sequence[str], *, max_seq_len: int
) -> list[dict[str, Any]]:
    """Training tokens (prompt + target, the train split) under A and B per (level, block),
    then a ``total`` row per level; levels in ``files`` order, blocks in partition order.
    ``A_truncated``/``B_truncated``: examples longer than ``max_seq_len`` (shortened as in training)."""
    from trajhpc.data.conditions import tokenize_examples
    from trajhpc.data.tokens import count_tokens

    levels = list(dict.fromkeys(Path(name.rstrip("/")).stem for name in files))
    cells: dict[tuple[str, str], list[Record]] = {}
    for block in study.blocks:
        for record in study.train[block]:
            cells.setdefault((level_of(record, files), block), []).append(record)
    rows: list[dict[str, Any]] = []
    for level in levels:
        totals = {"examples": 0, "A": 0, "B": 0, "A_truncated": 0, "B_truncated": 0}
        for block in study.blocks:
            records = cells.get((level, block), [])
            if not records:
                continue
            row = {"level": level, "block": block, "examples": len(records)}
            for condition in ("A", "B"):
                examples = tokenize_examples(tokenizer, records, condition, max_seq_len=max_seq_len)
                row[condition] = count_tokens(examples).total_tokens
                row[f"{condition}_truncated"] = sum(e.is_truncated for e in examples)
            rows.append(row)
            for key in totals:
                totals[key] += row[key]
        if totals["examples"]:
            rows.append({"level": level, "block": "total", **totals})
    return rows


def mix_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """B/A of every mix of two or more levels (from the ``total`` rows), smallest mixes first;
    above :data:`MAX_MIX_LEVELS` levels only the mix of all of them."""
    totals = {r["level"]: r for r in rows if r["block"] == "total"}
    levels = list(totals)
    sizes = range(2, len(levels) + 1) if len(levels) <= MAX_MIX_LEVELS else [len(levels)]
    out = []
    for size in sizes:
        for mix in itertools.combinations(levels, size):
            a = sum(totals[level]["A"] for level in mix)
            b = sum(totals[level]["B"] for level in mix)
            out.append({"mix": " + ".join(mix), "A": a, "B": b})
    return out


def _ratio(row: dict[str, Any]) -> str:
    return f"{row['B'] / row['A']:.3f}" if row["A"] else "-"


def render_token_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    # Names may wrap; the numbers never shrink.
    for col in ("level", "block"):
        table.add_column(col, overflow="fold")
    for col in ("examples", "A tokens", "B tokens", "B/A"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for i, row in enumerate(rows):
        last_of_level = i == len(rows) - 1 or rows[i + 1]["level"] != row["level"]
        table.add_row(
            row["level"], row["block"], str(row["examples"]), f"{row['A']:,}", f"{row['B']:,}", _ratio(row),
            end_section=last_of_level and i != len(rows) - 1,
        )
    return table


def render_mix_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=f"mixes of levels (the pilot: B/A {PILOT_RATIO})")
    table.add_column("mix", overflow="fold")
    for col in ("A tokens", "B tokens", "B/A", f"vs {PILOT_RATIO}"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for row in rows:
        gap = row["B"] / row["A"] - PILOT_RATIO if row["A"] else None
        table.add_row(
            row["mix"], f"{row['A']:,}", f"{row['B']:,}", _ratio(row), "-" if gap is None else f"{gap:+.3f}"
        )
    return table


def _data_spec(
    *,
    source: Path | None,
    hf: str | None,
    revision: str | None,
    files: list[str] | None,
    blocks: str | None,
    heldout_fraction: float | None,
) -> DataSpec:
    blocks = blocks or "lv3-rules"
    heldout_fraction = 0.2 if heldout_fraction is None else heldout_fraction
    if blocks not in ("lv3-rules", "scenario"):
        raise TrajhpcError(f"--blocks: unknown partition {blocks!r}; choose 'lv3-rules' or 'scenario'")
    if not 0.0 < heldout_fraction < 1.0:
        raise TrajhpcError(f"--heldout-fraction: must be between 0 and 1 (exclusive), got {heldout_fraction:g}")
    if source is not None and hf is not None:
        raise TrajhpcError("--source and --hf: give one (a folder, or a Hugging Face dataset in the local cache)")
    if revision is not None and hf is None:
        raise TrajhpcError("--revision: only with --hf")
    try:
        return DataSpec(
            root=str(source) if source is not None else None,
            source=HubSource(hf=hf, revision=revision) if hf is not None else None,
            files=tuple(files) if files else DataSpec().files,
            blocks=BlocksSpec(kind=blocks),  # type: ignore[arg-type]
            heldout_fraction=heldout_fraction,
        )
    except ValidationError as err:
        first = err.errors()[0]
        option = "--revision" if "revision" in first["loc"] else "--hf"
        raise TrajhpcError(f"{option}: " + first["msg"].removeprefix("Value error, ")) from None


def inspect_command(
    console: Console,
    *,
    source: Path | None,
    files: list[str] | None,
    blocks: str | None,
    heldout_fraction: float | None,
    hf: str | None = None,
    revision: str | None = None,
    manifest: Path | None = None,
    tokens: str | None = None,
    max_seq_len: int | None = None,
    ceiling: bool = False,
    overrides: Sequence[str] = (),
) -> None:
    """Load the data as a study would and print the per-block table; with ``tokens`` (a
    model spec) also the B/A training-token tables; with ``ceiling`` each arm's ceiling from the
    data alone. ``manifest`` takes the data settings (and ``train.max_seq_len``, and the arms of
    ``ceiling``) from a manifest, read with the ``--set`` ``overrides``, instead of the options."""
    if overrides and manifest is None:
        raise TrajhpcError("--set overrides a manifest field: name the manifest with --manifest")
    if manifest is not None:
        options = (
            ("--source", source), ("--hf", hf), ("--revision", revision), ("--file", files or None),
            ("--blocks", blocks), ("--heldout-fraction", heldout_fraction),
        )
        given = [name for name, value in options if value is not None]
        if given:
            raise TrajhpcError(f"--manifest: takes the data settings from the manifest; drop {', '.join(given)}")
        from trajhpc.study.grid import pinned_data
        from trajhpc.study.manifest import load_manifest

        study_manifest = load_manifest(manifest, overrides)
        spec = pinned_data(study_manifest)
        seq_len = study_manifest.train.max_seq_len if max_seq_len is None else max_seq_len
    else:
        spec = _data_spec(
            source=source, hf=hf, revision=revision, files=files, blocks=blocks, heldout_fraction=heldout_fraction
        )
        if spec.source is not None:
            from trajhpc.data.source import pin_fingerprint

            spec = pin_fingerprint(spec)
        seq_len = DEFAULT_MAX_SEQ_LEN if max_seq_len is None else max_seq_len
    if seq_len < 16:
        raise TrajhpcError(f"--max-seq-len: must be at least 16, got {seq_len}")
    study = load_study_data(spec)
    title = f"{', '.join(spec.files)}: {spec.blocks.kind} blocks, held-out fraction {spec.heldout_fraction:g}"
    console.print(render_table(block_rows(study), title))
    if study.excluded:
        console.print(
            f"{study.n_excluded} record(s) excluded (gold call cannot be parsed): "
            + ", ".join(e.record.uid for e in study.excluded),
            highlight=False, soft_wrap=True,
        )
    if spec.source is not None:
        at = f"@{spec.source.revision}" if spec.source.revision else ""
        console.print(f"data: Hugging Face dataset {spec.source.hf}{at} (local cache), fingerprint {spec.fingerprint}")
    if ceiling:
        from trajhpc.study.ceilingtable import condition_rows, manifest_rows, render_ceiling_table

        rows = manifest_rows(study_manifest) if manifest is not None else condition_rows(study, spec)
        arms = "the manifest's arms" if manifest is not None else "each condition"
        console.print(render_ceiling_table(rows, f"ceiling of {arms}, from the data alone"))
    if tokens is None:
        return
    from transformers import AutoTokenizer

    from trajhpc.job.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model(tokens)))
    rows = token_rows(study, tokenizer, spec.files, max_seq_len=seq_len)
    console.print(
        render_token_table(
            rows,
            f"training tokens (prompt + target, train split) under A and B: tokenizer {tokens}, max_seq_len {seq_len}",
        )
    )
    truncated = {c: sum(r[f"{c}_truncated"] for r in rows if r["block"] == "total") for c in ("A", "B")}
    if any(truncated.values()):
        console.print(
            f"over max_seq_len {seq_len}, shortened as in training (oldest history turns left out): "
            f"{truncated['A']} A and {truncated['B']} B examples"
        )
    mixes = mix_rows(rows)
    if mixes:
        console.print(render_mix_table(mixes))
