"""The job directories of a study as records: found, validated, classified, labelled by arm.

Reading never raises for a bad job: a missing, partial, corrupt or foreign job becomes a
:class:`JobRecord` with a status and the reason (:mod:`trajhpc.jobdir.documents` checks the
documents), so every table downstream can list it and leave it out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir.documents import OK, JobProblem, MetricsDoc, TokensDoc, read_job_docs_and_template
from trajhpc.jobdir.paths import RECORD, FileProblem, JobDir, find_job_dirs, read_json_object
from trajhpc.results.losscurves import TrainLogs, read_train_logs
from trajhpc.spec import JobSpec
from trajhpc.study.comparison import canonical_json, normalised
from trajhpc.study.manifest import Manifest, load_manifest

# Base-model size and LoRA parameters per rank (all-linear targets) of known models,
# used for FLOPs when the job did not record its parameter counts. LoRA on a d_in x d_out
# projection adds r * (d_in + d_out) parameters; summed over q, k, v, o, gate, up, down:
# SmolLM2-135M (30 layers, hidden 576, MLP 1536, KV 3 x 64): 10,176 per layer and rank;
# Llama-3.1-8B (32 layers, hidden 4096, MLP 14336, KV 8 x 128): 81,920 per layer and rank.
MAX_RECORD_BYTES = 2**20  # a submission.json is a few kB
MODEL_PARAMS: dict[str, dict[str, float]] = {
    "smollm2-135m-instruct": {"base": 134_515_008, "lora_per_rank_all_linear": 30 * 10_176},
    "meta-llama/Llama-3.1-8B-Instruct": {"base": 8_030_261_248, "lora_per_rank_all_linear": 32 * 81_920},
}


@dataclass(frozen=True)
class JobRecord:
    """One job directory as found: its status and, when ``ok``, its validated documents."""

    path: Path
    status: str
    reason: str | None = None
    file: Path | None = None  # the file the reason is about
    spec: JobSpec | None = None
    metrics: MetricsDoc | None = None
    tokens: TokensDoc | None = None
    variant: str | None = None

    @property
    def study(self) -> str:
        return self.path.parent.name


# ---------------------------------------------------------------- discovery and reading


def resolve_targets(targets: Sequence[Path]) -> list[Path]:
    """Run roots as given; a manifest (.yaml/.yml) stands for its ``run_root/study`` folder."""
    return resolve_targets_and_manifests(targets)[0]


def resolve_targets_and_manifests(
    targets: Sequence[Path], overrides: Sequence[str] = ()
) -> tuple[list[Path], dict[Path, Manifest]]:
    """:func:`resolve_targets`, and the manifests given as targets by their study folder (resolved),
    read with the ``--set`` ``overrides`` (which need a manifest among the targets)."""
    if overrides and not any(Path(t).suffix in (".yaml", ".yml") for t in targets):
        raise TrajhpcError("--set applies to a manifest: name the manifest (.yaml) the jobs were submitted from")
    roots, manifests = [], {}
    for target in targets:
        target = Path(target)
        if target.is_file() and target.suffix in (".yaml", ".yml"):
            folder, manifest = _manifest_study_dir(target, overrides)
            roots.append(folder)
            manifests[Path(os.path.realpath(folder))] = manifest
        elif target.is_dir():
            roots.append(target)
        elif target.exists():
            raise TrajhpcError(f"{target}: not a run root (folder) or a manifest (.yaml)")
        else:
            raise TrajhpcError(f"{target}: no such run root or manifest")
    return roots, manifests


def _manifest_study_dir(path: Path, overrides: Sequence[str] = ()) -> tuple[Path, Manifest]:
    # The manifest module validates the file (errors name file, field and line, or the override);
    # a relative run_root is taken from the current folder, as `trajhpc submit` does.
    manifest = load_manifest(path, overrides)
    folder = Path(manifest.run_root) / manifest.study
    if not folder.is_dir():
        raise TrajhpcError(f"{folder}: no jobs yet for manifest {path} (study folder missing)")
    return folder, manifest


def study_manifest(
    folder: Path, submissions: Iterable[dict[str, Any]], given: Manifest | None = None
) -> Manifest | None:
    """The manifest of the study in ``folder``: ``given`` (a manifest named as the aggregate's
    target) if any; else the manifest the jobs' ``submission.json`` records (``submissions``, as
    :func:`submission_records` reads them), with the ``--set`` overrides it records, when it still
    exists, parses and names this study (the most often recorded first); else None.

    Never raises: a manifest that moved, changed or broke since the jobs were submitted is
    simply not used (the aggregate then falls back to its own arm order and primary).
    """
    if given is not None:
        return given
    counts: dict[tuple[str, tuple[str, ...]], int] = {}
    for record in submissions:
        path, overrides = record.get("manifest"), record.get("overrides") or []
        if isinstance(path, str) and path and isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
            key = (path, tuple(overrides))
            counts[key] = counts.get(key, 0) + 1
    for path, overrides in sorted(counts, key=lambda k: (-counts[k], k)):
        try:
            manifest = load_manifest(path, overrides)
        except (TrajhpcError, OSError, ValueError):
            continue
        if manifest.study == folder.name:
            return manifest
    return None


MISSING = "missing"
FOREIGN = "foreign"


def manifest_grid(manifest: Manifest, folder: Path) -> tuple[list[Any] | None, str | None]:
    """(the manifest's grid jobs in ``folder``, None) or (None, why it could not be expanded)."""
    from trajhpc.study.grid import expand

    try:
        return expand(manifest, run_root=folder.parent), None
    except (TrajhpcError, ValueError) as err:
        return None, f"the manifest's grid could not be expanded to check for missing jobs: {err}"


def split_foreign(
    records: Sequence[JobRecord], grid: Sequence[Any], source: str
) -> tuple[list[JobRecord], pl.DataFrame]:
    """(the records of the grid's jobs, the others as jobs.csv rows of status ``foreign``): job
    directories in the study folder that another manifest (or other settings) made."""
    ids = {j.job_id for j in grid}
    own = [r for r in records if r.path.name in ids]
    other = [r for r in records if r.path.name not in ids]
    rows = jobs_frame(other).with_columns(
        pl.lit(FOREIGN).alias("status"),
        pl.lit(f"not in the grid of {source} (another manifest's job, or other settings): left out").alias("reason"),
        pl.lit(None, dtype=pl.String).alias("file"),
    )
    return own, rows


def missing_jobs(
    manifest: Manifest, folder: Path, records: Sequence[JobRecord], grid: Sequence[Any] | None = None
) -> tuple[pl.DataFrame, str | None]:
    """The jobs of the manifest's grid (expanded here unless given) with no job directory in
    ``folder``, as jobs.csv rows of status ``missing``; and why the grid could not be expanded
    (None when it was)."""
    why = None
    if grid is None:
        grid, why = manifest_grid(manifest, folder)
    if grid is None:
        return jobs_frame([]), why
    found = {r.path.name for r in records}
    absent = [j for j in grid if j.job_id not in found]
    return pl.DataFrame(
        {
            "study": [j.study for j in absent],
            "job_id": [j.job_id for j in absent],
            "status": [MISSING] * len(absent),
            "reason": [f"no job directory: arm {j.spec.arm}, seed {j.spec.seed}, order {'>'.join(j.spec.order)} "
                       "(not submitted yet, still queued, or removed)" for j in absent],
            "file": [None] * len(absent),
            "path": [str(j.run_dir) for j in absent],
        },
        schema=dict.fromkeys(("study", "job_id", "status", "reason", "file", "path"), pl.String),
    ), None


def recorded_analyses(submissions: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """The analyses ``trajhpc submit`` recorded in the jobs' ``submission.json`` (``submissions``, as
    :func:`submission_records` reads them), every attempt (``previous``) included, defaults filled:
    each with the number of jobs that recorded it, most first.

    Never raises: a record that holds no analysis (submitted before trajhpc recorded it) adds nothing
    (an unreadable one is not among ``submissions``).
    """
    counts: dict[str, int] = {}
    for record in submissions:
        previous = record.get("previous")
        attempts = [record, *(previous if isinstance(previous, list) else [])]
        docs = [a["analysis"] for a in attempts if isinstance(a, dict) and isinstance(a.get("analysis"), dict)]
        for key in {canonical_json(normalised(doc)) for doc in docs}:  # a job counts once per version
            counts[key] = counts.get(key, 0) + 1
    return [(json.loads(key), n) for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def submission_records(records: Sequence[JobRecord]) -> dict[str, dict[str, Any]]:
    """Each job's ``submission.json`` that can be read as a JSON object, by job directory name (the
    others skipped): read once per study, for :func:`study_manifest` and :func:`recorded_analyses`."""
    out = {}
    for r in records:
        try:
            record = read_json_object(os.path.join(r.path, RECORD), max_bytes=MAX_RECORD_BYTES)
        except FileProblem:
            continue
        if record:
            out[r.path.name] = record
    return out


def collect_jobs(roots: Iterable[Path]) -> list[JobRecord]:
    """Read and validate every job directory under the roots (never raises for bad jobs)."""
    return [read_job(d) for d in find_job_dirs(roots)]


def read_job(job_dir: Path) -> JobRecord:
    """Validate one job directory against the contract; problems become a status, not an exception."""
    try:
        spec, metrics, tokens, template = read_job_docs_and_template(job_dir)
    except JobProblem as problem:
        return JobRecord(job_dir, problem.status, problem.reason, job_dir / problem.file)
    return JobRecord(job_dir, OK, spec=spec, metrics=metrics, tokens=tokens, variant=_template_variant(spec, template))


def group_by_study(records: Sequence[JobRecord]) -> dict[Path, list[JobRecord]]:
    """Records per study folder (the folder holding the job directories), sorted."""
    groups: dict[Path, list[JobRecord]] = {}
    for r in records:
        groups.setdefault(r.path.parent, []).append(r)
    return {k: sorted(v, key=lambda r: r.path.name) for k, v in sorted(groups.items())}


_ITEM_CHUNK_ROWS = 200_000  # prediction rows per frame while reading (read_items)


def read_items(records: Sequence[JobRecord]) -> tuple[pl.DataFrame | None, list[str]]:
    """The final-stage prediction rows of the ``ok`` jobs, and one ``<job dir>/<file>: why`` for each
    job whose final predictions are missing, empty or unusable (its rows are left out)."""
    from trajhpc.results.itemtables import item_frame, read_prediction_rows

    # Rows become frames a few hundred thousand at a time: a frame per job cost a 10,000-job study
    # seconds, and two million rows held as Python objects would cost gigabytes.
    read: list[tuple[JobRecord, list[str | None]]] = []  # each ok job and its rows' item ids
    problems, frames, pending, pending_rows = [], [], [], 0
    interned: dict[str, str] = {}  # every job names the same few hundred items: one string each
    for r in records:
        if r.status == OK and r.spec is not None:
            rows, problem = read_prediction_rows(r.path, len(r.spec.stage_blocks))
            if problem is not None:
                problems.append(f"{r.path}/{problem}")
            read.append((r, [None if (i := row.get("item")) is None else interned.setdefault(i, i) for row in rows]))
            pending.append((r.path.name, rows))
            pending_rows += len(rows)
            if pending_rows >= _ITEM_CHUNK_ROWS:
                frames.append(item_frame(pending))
                pending, pending_rows = [], 0
    if not read:
        return None, problems
    frames.append(item_frame(pending))
    # Jobs of one variant (same data, same split) score the same held-out items, each once: a file
    # missing a line or repeating one would otherwise narrow or tilt the item tables without notice.
    # The item set most of a variant's jobs hold is the study's; with no majority, none is trusted.
    sets: dict[str | None, Counter[frozenset[str]]] = {}
    for r, items in read:
        if items and None not in items:
            sets.setdefault(r.variant, Counter())[frozenset(items)] += 1
    expected: dict[str | None, frozenset[str] | None] = {}
    for variant, counts in sets.items():
        (top, n), *rest = counts.most_common(2) + [(None, 0)]
        expected[variant] = top if n > rest[0][1] else None
    dropped = []
    for r, items in read:
        want = expected.get(r.variant)
        nulls = items.count(None)
        if 0 < nulls < len(items):  # files written before rows had ids have none: this one lost some
            where = JobDir(r.path).predictions(len(r.spec.stage_blocks)).name
            problems.append(f"{r.path}/predictions/{where}: corrupt: {nulls} of {len(items)} rows have no item id")
            dropped.append(r.path.name)
        elif items and not nulls and (len(set(items)) != len(items) or set(items) != want):
            where = JobDir(r.path).predictions(len(r.spec.stage_blocks)).name
            others = (f"the study's other jobs score {len(want)} items once each" if want is not None
                      else "the study's jobs disagree on which items they score, no set held by most")
            problems.append(f"{r.path}/predictions/{where}: corrupt: {len(set(items))} distinct items in "
                            f"{len(items)} rows, where {others}")
            dropped.append(r.path.name)
    frame = pl.concat(frames)
    return (frame.filter(~pl.col("job_id").is_in(dropped)) if dropped else frame), problems


def read_logs(records: Sequence[JobRecord]) -> TrainLogs:
    """The ``train_log.jsonl`` of the ``ok`` jobs (missing or damaged ones noted, never raised)."""
    return read_train_logs([(r.path.name, r.path, len(r.spec.stage_blocks)) for r in records if r.status == OK and r.spec])


# ---------------------------------------------------------------- arms


# The arm's own fields (data.tool_docs names arms too: "B+docs-dialogue") are not a variant, nor
# eval.also_under: it adds scores under other conditions and leaves the own ones as they are (and a
# manifest's also_under: [B] is dropped from the B arm's jobs, which must still pair with A's).
_NOT_VARIANT: dict[str, Any] = {
    "condition": True, "condition_k": True, "seed": True, "order": True, "token_budget": True, "data": {"tool_docs"},
    "eval": {"also_under"}, "curriculum": True, "replay": True,
}


def _without(doc: dict[str, Any], drop: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value if key not in drop else _without(value, dict.fromkeys(drop[key], True))
        for key, value in doc.items() if drop.get(key) is not True
    }


def variant_of(spec: JobSpec) -> str:
    """Hash of the settings other than the arm's (condition, budget, tool docs, curriculum), seed and order:
    equal variants compare. Taken over the spec's canonical form (:meth:`JobSpec.to_dict`), as the job id is."""
    kept = _without(spec.to_dict(), _NOT_VARIANT)
    return hashlib.sha256(canonical_json(kept).encode()).hexdigest()[:6]


# Seed and order are no part of a variant, so specs of one template (trajhpc.spec.template_key: the
# spec without them) share it: computed once per template, not per job (a 10,000-job study has a few).
_VARIANTS: dict[str, str] = {}


def _template_variant(spec: JobSpec, template: str) -> str:
    """:func:`variant_of` ``spec``, whose :func:`trajhpc.spec.template_key` is ``template``."""
    variant = _VARIANTS.get(template)
    if variant is None:
        if len(_VARIANTS) > 4096:
            _VARIANTS.clear()
        variant = _VARIANTS[template] = variant_of(spec)
    return variant


def jobs_frame(records: Sequence[JobRecord]) -> pl.DataFrame:
    """One row per job directory found: study, job_id, status, the reason and file when excluded, path."""
    return pl.DataFrame(
        {
            "study": [r.study for r in records],
            "job_id": [r.path.name for r in records],
            "status": [r.status for r in records],
            "reason": [r.reason for r in records],
            "file": [str(r.file) if r.file else None for r in records],
            "path": [str(r.path) for r in records],
        },
        schema=dict.fromkeys(("study", "job_id", "status", "reason", "file", "path"), pl.String),
    )


def _arm_identity(spec: JobSpec) -> tuple[Any, ...]:
    budget = spec.token_budget
    return (spec.condition, spec.condition_k, budget.match if budget else None, budget.count if budget else None,
            spec.curriculum, spec.replay)


def arm_labels(records: Sequence[JobRecord]) -> dict[str, str]:
    """Job id -> arm label: ``JobSpec.arm``, made distinct where two arms that train differently share it.

    Arms that differ only by ``token_budget.count`` (A matched to B on supervised and on
    total tokens) get the count appended (``A@B:supervised``, ``A@B:total``), so they are
    summarised and paired apart instead of merged; anything else still colliding gets
    a short hash of its arm fields.
    """
    groups: dict[tuple[str, str | None], set[tuple[Any, ...]]] = {}
    ok = [(r, r.spec) for r in records if r.status == OK and r.spec is not None]
    for r, spec in ok:
        groups.setdefault((spec.arm, r.variant), set()).add(_arm_identity(spec))
    labels = {}
    for r, spec in ok:
        label = spec.arm
        if len(groups[(label, r.variant)]) > 1:
            counts = {identity[3] for identity in groups[(label, r.variant)]}
            same_but_count = len({identity[:3] + identity[4:] for identity in groups[(label, r.variant)]}) == 1
            if spec.token_budget is not None and same_but_count and len(counts) == len(groups[(label, r.variant)]):
                label = f"{label}:{spec.token_budget.count}"
            else:
                label = f"{label} [{hashlib.sha256(repr(_arm_identity(spec)).encode()).hexdigest()[:6]}]"
        labels[r.path.name] = label
    return labels


def arm_rank(arm: str) -> tuple[int, str]:
    """Comparison order: B first, A (the stripped baseline) last, the rest alphabetical."""
    base = arm.split(" (")[0]
    return (0 if base == "B" else 2 if base == "A" else 1, arm)


def arm_order(arms: Iterable[str], listed: Sequence[str] = ()) -> list[str]:
    """The arms in display order: those the manifest lists (``listed``) in its order, then the
    others (variant-labelled arms, or every arm when no manifest is known) by :func:`arm_rank`."""
    position = {arm: i for i, arm in enumerate(listed)}
    return sorted(set(arms), key=lambda a: (0, position[a], "") if a in position else (1, *arm_rank(a)))


def pair_direction(x: str, y: str, declared: Sequence[tuple[str, str]] = (("B", "A"),)) -> tuple[str, str]:
    """(arm, baseline) of the comparison of two arms: the direction of the first declared
    comparison of the two (``Analysis.directions``), else by :func:`arm_rank` (B minus the
    others, anything minus A)."""
    for arm, baseline in declared:
        if {x, y} == {arm, baseline}:
            return arm, baseline
    return (x, y) if arm_rank(x) <= arm_rank(y) else (y, x)


def params_frame(records: Sequence[JobRecord]) -> pl.DataFrame:
    """Per job: base and trainable parameter counts and where they came from (null when unknown)."""
    rows: dict[str, list[Any]] = {"job_id": [], "params_base": [], "params_trainable": [], "params_source": []}
    for r in records:
        if r.status != OK:
            continue
        if r.spec is None or r.metrics is None:  # an ok record has both (read_job)
            raise ValueError(f"{r.path}: record of status ok without its spec and metrics")
        res = r.metrics.resources
        base = trainable = source = None
        if res is not None and res.params_base is not None and res.params_trainable is not None:
            base, trainable, source = res.params_base, res.params_trainable, "resources"
        elif (known := MODEL_PARAMS.get(r.spec.model)) is not None and r.spec.lora.target_modules == "all-linear":
            base, source = known["base"], "model table"
            trainable = known["lora_per_rank_all_linear"] * r.spec.lora.r
        for key, value in zip(rows, (r.path.name, base, trainable, source)):
            rows[key].append(value)
    return pl.DataFrame(rows, schema=PARAMS_SCHEMA)


PARAMS_SCHEMA = {
    "job_id": pl.String, "params_base": pl.Float64, "params_trainable": pl.Float64, "params_source": pl.String,
}
