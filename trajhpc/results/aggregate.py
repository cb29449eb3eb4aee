"""`trajhpc aggregate`: read job directories, join scores with token counts, compare arms.

I/O stays at the edges: :func:`trajhpc.results.jobrecords.collect_jobs` reads and validates job
directories, :func:`write_outputs` writes the results. In between everything is pure over
polars frames (:mod:`trajhpc.results.tables`): the long table (one row per job x stage x evaluated
block), units, per-arm summaries with bootstrap CIs, paired differences, continual-learning
metrics and compute matching; :mod:`trajhpc.results.itemtables` adds the example-level tables.

A job that is missing, partial, corrupt, of a foreign schema or whose spec hash does
not match its id is listed with the reason and left out of every statistic.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from trajhpc.core.atomic import atomic_write_bytes, atomic_write_text
from trajhpc.core.errors import TrajhpcError
from trajhpc.core.gcpause import gc_paused
from trajhpc.jobdir.documents import OK
from trajhpc.results import plots as plots_module
from trajhpc.results import report, stats
from trajhpc.results.ceilings import ceiling_frame
from trajhpc.results.htmlreport import render_html
from trajhpc.results.jobrecords import (
    JobRecord,
    collect_jobs,
    group_by_study,
    jobs_frame,
    manifest_grid,
    missing_jobs,
    read_items,
    read_logs,
    recorded_analyses,
    resolve_targets_and_manifests,
    split_foreign,
    study_manifest,
    submission_records,
)
from trajhpc.results.paper import render_latex
from trajhpc.results.retrieval import add_exact_retrieval
from trajhpc.results.studyresult import OUTPUT_DIR, StudyResult
from trajhpc.results.tables import analyze_study, paired_table
from trajhpc.results.truncation import truncation_notes
from trajhpc.study.manifest import Manifest

# ---------------------------------------------------------------- outputs and command


def _csv(frame: pl.DataFrame) -> str:
    return frame.write_csv(float_precision=6)


def write_outputs(result: StudyResult, *, plots: bool = True) -> Path:
    """Tables, report.md, tables.tex, report.html and (optionally) plots into ``<study folder>/aggregate/``;
    returns that folder."""
    out = result.folder / OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    result.long.write_parquet(buf)
    atomic_write_bytes(out / "long.parquet", buf.getvalue())
    atomic_write_text(out / "long.csv", _csv(result.long))
    atomic_write_text(out / "jobs.csv", _csv(result.jobs.drop("path")))
    tables = ("units", "summary", "stages", "rmatrix", "rmatrix_blocks", "compute", "strata", "baselines", "factorial",
              "ceiling")
    for name in tables:
        atomic_write_text(out / f"{name}.csv", _csv(getattr(result, name)))
    atomic_write_text(out / "loss_curves.csv", _csv(result.loss))
    atomic_write_text(out / "paired.csv", _csv(paired_table(result)))
    if result.train_eval.height:  # only a study evaluated under other conditions (eval.also_under) has them
        atomic_write_text(out / "train_eval.csv", _csv(result.train_eval))
        atomic_write_text(out / "train_eval_paired.csv", _csv(result.train_eval_paired))
    figures = plots_module.write_plots(result, out) if plots and result.units.height else []
    atomic_write_text(out / "report.md", report.render_markdown(result, figures))
    atomic_write_text(out / "tables.tex", render_latex(result))
    atomic_write_text(out / "report.html", render_html(result, out, figures))
    return out


def aggregate(
    targets: Sequence[Path], *, strict: bool = False, resamples: int = stats.RESAMPLES, seed: int = stats.SEED,
    overrides: Sequence[str] = (),
) -> list[StudyResult]:
    """Discover, validate and analyse every study under the targets (manifests read with the ``--set``
    ``overrides``; no files written)."""
    with gc_paused():
        return [
            # The study's manifest orders the arms and declares the primary and secondary comparisons;
            # without one the aggregate keeps its own order (B first, A last) and B − A, checked
            # either way against the analysis the jobs' submission records hold.
            _analyze(s, strict=strict, resamples=resamples, seed=seed) for s in read_studies(targets, strict=strict, overrides=overrides)
        ]


def _analyze(s: "StudyRecords", *, strict: bool, resamples: int, seed: int) -> StudyResult:
    items, unread = read_items(s.records)
    # Jobs whose predictions are unusable while others' are read would silently narrow the
    # item tables to the rest. (A study none of whose jobs left predictions has no item tables.)
    if items is None or items.height == 0:
        unread = []
    if unread and strict:
        more = f" (and {len(unread) - 1} more jobs)" if len(unread) > 1 else ""
        raise TrajhpcError(f"{unread[0]}{more}")
    # ToolSearcher calls are rescored by retrieval from the stored predictions, so a finished
    # study gains exact_retrieval without rerunning a job.
    items, notes = add_exact_retrieval(items, s.records)
    if unread:
        notes.insert(0, f"the final predictions of {len(unread)} job(s) could not be used, so their items are "
                        f"left out of every example-level table (their units still count): {'; '.join(unread[:3])}"
                        + (" …" if len(unread) > 3 else ""))
    result = analyze_study(
        s.folder.name, s.folder, s.records, resamples=resamples, seed=seed, items=items,
        manifest=s.manifest, train_logs=read_logs(s.records),
        recorded=recorded_analyses(s.submissions[r.path.name] for r in s.records if r.path.name in s.submissions),
    )
    result.notes += notes + truncation_notes(s.records)
    # Each arm's ceiling from the data alone: loads the data of the jobs' specs (no model).
    result.ceiling, ceiling_notes = ceiling_frame(s.records, result.units, result.arms)
    result.notes += ceiling_notes
    if s.foreign.height:
        result.jobs = pl.concat([result.jobs, s.foreign])
        result.notes.append(
            f"{s.foreign.height} job directories in this folder are not in the grid of {s.manifest_source} "
            "(another manifest's jobs, or earlier settings): left out of every table (status foreign in jobs.csv)."
        )
    if s.outside_grid:
        result.notes.append(
            f"None of the {s.outside_grid} job directories in this folder is in the grid of {s.manifest_source} "
            "(was it edited since the jobs were submitted?): all of them are aggregated, ordered and compared as "
            "the manifest declares, and its own jobs are listed as missing."
        )
    if result.long.height and result.long["variant"].n_unique() > 1:
        result.notes.append(
            "This folder mixes jobs of different settings (model, data, LoRA, training or evaluation settings, "
            "recipe): each arm is split by variant, labelled `ARM (xxxxxx)` where the suffix is a short hash of "
            "those settings (`variant` in units.csv and long.csv); arms of different variants differ in more than "
            "the arm. Name the study's manifest to aggregate its grid only."
        )
    if s.manifest is not None:
        # A grid run only in part must not read as complete: every job of the manifest without a
        # directory is listed in jobs.csv and the report (and fails --strict).
        missing, why = missing_jobs(s.manifest, s.folder, s.records, s.grid)
        if why is not None:
            result.notes.append(why)
        if missing.height and strict:
            first = missing.row(0, named=True)
            more = f" (and {missing.height - 1} more)" if missing.height > 1 else ""
            raise TrajhpcError(f"{first['path']}: missing: {first['reason']}{more}")
        if missing.height:
            result.jobs = pl.concat([result.jobs, missing])
            result.notes.append(f"{missing.height} of the manifest's jobs have no job directory (status missing in "
                                "jobs.csv and Excluded jobs): the study is not complete.")
    return result


@dataclass(frozen=True)
class StudyRecords:
    """One study folder's job records and its manifest (None when none is found), as read for the aggregate."""

    folder: Path
    records: list[JobRecord]
    manifest: Manifest | None
    # With a manifest named as the target: its grid, and the folder's other jobs (left out).
    grid: list[Any] | None = None
    foreign: pl.DataFrame = field(default_factory=lambda: jobs_frame([]))
    manifest_source: str | None = None
    outside_grid: int = 0  # jobs read although not in the named manifest's grid (none of the folder's is)
    submissions: dict[str, dict[str, Any]] = field(default_factory=dict)  # job dir name -> its submission.json


def read_studies(targets: Sequence[Path], *, strict: bool = False, overrides: Sequence[str] = ()) -> list[StudyRecords]:
    """Every study folder under the targets (run roots, study folders, manifests) with its records.

    Raises when there is no job directory at all, or with ``strict`` when any job is not ok.
    """
    roots, manifests = resolve_targets_and_manifests(targets, overrides)
    records = collect_jobs(roots)
    if not records:
        where = ", ".join(str(r) for r in roots)
        raise TrajhpcError(f"no job directories (folders with spec.json) under {where}")
    studies = []
    for folder, recs in group_by_study(records).items():
        given = manifests.get(folder)
        submissions = submission_records(recs)
        study = StudyRecords(folder, recs, study_manifest(folder, submissions.values(), given), submissions=submissions)
        if given is not None:
            grid, _ = manifest_grid(given, folder)
            own, foreign = split_foreign(recs, grid, str(given.source)) if grid is not None else (recs, None)
            if foreign is not None and own:
                # A named manifest is the study: the folder's other jobs (another manifest's) are left out.
                study = StudyRecords(folder, own, given, grid, foreign, str(given.source), submissions=submissions)
            elif foreign is not None:
                # None of the folder's jobs is in its grid (edited since submit?): every job is read,
                # ordered and compared as it declares, and the report says so (and lists its grid as missing).
                study = StudyRecords(folder, recs, given, grid, outside_grid=len(recs),
                                     manifest_source=str(given.source), submissions=submissions)
        studies.append(study)
    bad = [r for s in studies for r in s.records if r.status != OK]
    if strict and bad:
        first = bad[0]
        detail = (first.reason or "").split(": ", 1)[-1]  # the reason starts with the file name
        more = f" (and {len(bad) - 1} more bad jobs)" if len(bad) > 1 else ""
        raise TrajhpcError(f"{first.file}: {first.status}: {detail}{more}")
    return studies


def aggregate_command(
    console: Any, targets: list[Path], *, strict: bool, plots: bool, overrides: Sequence[str] = ()
) -> list[StudyResult]:
    """CLI entry: aggregate, write every study's outputs, print a summary per study."""
    results = aggregate(targets, strict=strict, overrides=overrides)
    for result in results:
        try:
            out = write_outputs(result, plots=plots)
        except OSError as err:
            why = (err.strerror or str(err)).lower()
            raise TrajhpcError(f"{result.folder}: cannot write the results into {OUTPUT_DIR}/ ({why})") from None
        report.print_summary(console, result, out)
    return results
