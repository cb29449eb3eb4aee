"""Readers of job directories under damage: one safe reader and one job finder for status and aggregate.

Every probe that once broke ``trajhpc status`` or ``trajhpc aggregate`` (a traceback, a
hang, a silently missing job, a misleading reason) is a test here: the bad job is listed
with the reason and every other job still is.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import synthetic_jobs as sj  # noqa: E402
from rich.console import Console

from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir import paths as jobdir
from trajhpc.jobdir.paths import FileProblem, find_job_dirs, read_json_file, read_json_object
from trajhpc.launch.status import collect_rows, counts_line
from trajhpc.launch.statuscmd import status_command
from trajhpc.results import aggregate as agg

N_JOBS = 4


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    """A study folder ``s1`` of four complete jobs (arms A, B x seeds 0, 1)."""
    sj.write_study(tmp_path, "s1", arms=("A", "B"), seeds=(0, 1), orders=[("a", "b", "c")])
    return tmp_path / "s1"


def _jobs(study: Path) -> list[Path]:
    """The job folders written by synthetic_jobs (not links, not other folders)."""
    return sorted(p for p in study.iterdir() if not p.is_symlink() and (p / "spec.json").is_file())


def _status(study: Path) -> dict[str, tuple[str, str]]:
    with deadline():
        rows = collect_rows(find_job_dirs(study))
    return {r.job_id: (r.label, r.detail) for r in rows}


def _aggregate(study: Path) -> dict[str, tuple[str, str | None]]:
    with deadline():
        (result,) = agg.aggregate([study], resamples=50)
    return {r["job_id"]: (r["status"], r["reason"]) for r in result.jobs.to_dicts()}


def _deep(depth: int) -> str:
    return '{"schema": "trajhpc.metrics/1", "x": ' + "[" * depth + "]" * depth + "}"


# ---------------------------------------------------------------- the reader


def test_read_json_file_results(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": [1, {"b": null}]}')
    assert read_json_file(tmp_path / "ok.json") == {"a": [1, {"b": None}]}
    assert read_json_object(tmp_path / "absent.json") is None
    cases = {
        "bad.json": (b'{"a": ', "not valid JSON at line 1"),
        "latin1.json": (b'{"a": "\xe9"}', "not UTF-8 text"),
        "utf16.json": ('{"a": 1}'.encode("utf-16"), "not UTF-8 text"),
        "deep.json": (_deep(100_000).encode(), "nested deeper than 64 levels"),
        "deep65.json": (_deep(65).encode(), "nested deeper than 64 levels"),
        "big.json": (b"[" + b"0," * 600 + b"0]", "larger than 1,000 bytes"),
        "list.json": (b"[1, 2]", "expected a JSON object, got list"),
    }
    for name, (content, words) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FileProblem) as info:
            read_json_object(tmp_path / name, max_bytes=1000 if name == "big.json" else jobdir.MAX_BYTES)
        assert info.value.kind == "corrupt" and words in info.value.reason, (name, info.value)
    (tmp_path / "deep63.json").write_text('{"x": ' + "[" * 63 + "]" * 63 + ', "s": "[[[[[[[[[[[[["}')
    assert read_json_file(tmp_path / "deep63.json")["s"] == "[" * 13  # brackets in strings do not count
    with pytest.raises(FileProblem, match=r"absent\.json: missing"):
        read_json_file(tmp_path / "absent.json")


def test_a_fifo_is_not_read_and_never_blocks(tmp_path):
    os.mkfifo(tmp_path / "metrics.json")
    with deadline(5), pytest.raises(FileProblem) as info:
        read_json_file(tmp_path / "metrics.json")
    assert (info.value.kind, info.value.reason) == ("corrupt", "not a regular file (a FIFO)")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(FileProblem, match="not a regular file \\(a folder\\)"):
        read_json_file(tmp_path / "dir.json")


def test_permission_denied_is_unreadable(tmp_path, monkeypatch):
    (tmp_path / "x.json").write_text("{}")
    _deny(monkeypatch, tmp_path)
    with pytest.raises(FileProblem) as info:
        read_json_file(tmp_path / "x.json")
    assert (info.value.kind, info.value.reason) == ("unreadable", "permission denied")


def _deny(monkeypatch, folder: Path) -> None:
    """Simulate ``chmod 000 folder`` (tests run as root, where chmod denies nothing)."""
    folder = str(folder)
    real_open, real_scandir, real_lstat = os.open, os.scandir, os.lstat

    def denied(path) -> bool:
        path = os.fspath(path)
        return path == folder or path.startswith(folder + os.sep)

    def fake(real, child_only=False):
        def call(path, *args, **kwargs):
            if denied(path) and not (child_only and os.fspath(path) == folder):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(jobdir.os, "open", fake(real_open))
    monkeypatch.setattr(jobdir.os, "scandir", fake(real_scandir))
    monkeypatch.setattr(jobdir.os, "lstat", fake(real_lstat, child_only=True))  # the folder itself is listed


# ---------------------------------------------------------------- finding job directories


def test_a_symlink_loop_is_skipped_and_every_job_still_found(study):
    (study / "loop").symlink_to(".")
    (study / "up").symlink_to("..")  # back into the tree when searching from the run root
    assert find_job_dirs(study.parent) == _jobs(study)
    assert find_job_dirs(study) == sorted([*_jobs(study), study / "up"])  # out of the tree from the study
    assert _status(study)["up"] == ("unreadable", f"a symbolic link to {study.parent}, not followed")
    (study / "up").unlink()
    assert len(_status(study)) == N_JOBS and all(label == "done" for label, _ in _status(study).values())
    assert set(_aggregate(study.parent).values()) == {("ok", None)}


def test_a_symlink_out_of_the_tree_is_listed_not_followed(study, tmp_path):
    outside = tmp_path / "elsewhere"
    job = sj.write_job(outside, sj.spec_for("A", seed=7), [[0.5] * 3] * 4)
    (study / job.name).symlink_to(job)
    assert study / job.name in find_job_dirs(study)
    assert _status(study)[job.name] == ("unreadable", f"a symbolic link to {job}, not followed")
    assert _aggregate(study)[job.name][0] == "unreadable"


def test_status_and_aggregate_agree_on_which_jobs_exist(study):
    stray = study / "stray"
    stray.mkdir()
    (stray / "tokens.json").write_text("{}")  # results without a spec: listed by both
    (study / "aggregate").mkdir()  # an output folder: no job
    assert [Path(p).name for p in find_job_dirs(study)] == sorted([*(p.name for p in _jobs(study)), "stray"])
    assert _status(study)["stray"] == ("corrupt", "spec.json: missing")
    assert _aggregate(study)["stray"][0] == "corrupt"


def test_an_unreadable_job_directory_is_listed_with_the_reason(study, monkeypatch):
    bad = _jobs(study)[0]
    _deny(monkeypatch, bad)
    assert _status(study)[bad.name] == ("unreadable", "cannot open the job directory (permission denied)")
    rows = collect_rows(find_job_dirs(study))
    assert counts_line(rows) == f"{N_JOBS} jobs: {N_JOBS - 1} done · 1 unreadable"
    got = _aggregate(study)
    assert got[bad.name] == ("unreadable", "cannot open the job directory (permission denied)")
    assert sum(status == "ok" for status, _ in got.values()) == N_JOBS - 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway (the patched test covers it)")
def test_an_unreadable_job_directory_for_real(study):
    bad = _jobs(study)[0]
    bad.chmod(0)
    try:
        assert _status(study)[bad.name][0] == "unreadable"
        assert _aggregate(study)[bad.name][0] == "unreadable"
    finally:
        bad.chmod(0o755)


def test_an_unreadable_root_is_one_clean_error(study, monkeypatch):
    _deny(monkeypatch, study)
    monkeypatch.setattr(jobdir.os, "lstat", os.stat)  # the root itself is denied too
    with pytest.raises(TrajhpcError, match="cannot read this folder \\(permission denied\\)"):
        find_job_dirs(study)


# ---------------------------------------------------------------- damage: status and aggregate both survive


def _write(name: str, content: str | bytes):
    def damage(job: Path) -> None:
        path = job / name
        path.unlink(missing_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return damage


def _edit(name: str, **values):
    def damage(job: Path) -> None:
        doc = json.loads((job / name).read_text())
        doc.update(values)
        (job / name).write_text(json.dumps(doc))

    return damage


def _fifo(name: str):
    def damage(job: Path) -> None:
        (job / name).unlink(missing_ok=True)
        os.mkfifo(job / name)

    return damage


RECORD = {"executor": "local", "local_pid": "abc", "submitit_folder": "/nowhere"}

DAMAGE = [
    # damage, status (label, detail words), aggregate (status, reason words or None when still ok)
    pytest.param(_write("metrics.json", _deep(10_000)), ("corrupt", "metrics.json: nested deeper than 64"),
                 ("corrupt", "nested deeper than 64"), id="deep-metrics"),
    pytest.param(_write("spec.json", _deep(500)), ("corrupt", "spec.json: nested deeper"), ("corrupt", "nested deeper"),
                 id="deep-spec"),
    pytest.param(_write("state.json", _deep(5000)), ("corrupt", "state.json: nested deeper"), ("ok", None),
                 id="deep-state"),
    pytest.param(_write("state.json", json.dumps({"state": "failed", "error": 123, "stage": 1, "n_stages": 3})),
                 ("corrupt", "state.json: error: expected a string or null, got an integer"), ("ok", None),
                 id="state-error-int"),
    pytest.param(_edit("spec.json", order=5), ("corrupt", "spec.json: order: Input should be a valid"),
                 ("corrupt", "order"), id="spec-order-int"),
    pytest.param(_write("submission.json", json.dumps(RECORD)),
                 ("corrupt", "submission.json: local_pid: expected an integer or null, got a string"), ("ok", None),
                 id="local-pid-str"),
    pytest.param(_fifo("metrics.json"), ("corrupt", "metrics.json: not a regular file (a FIFO)"),
                 ("corrupt", "metrics.json: not a regular file (a FIFO)"), id="fifo-metrics"),
    pytest.param(_fifo("state.json"), ("corrupt", "state.json: not a regular file"), ("ok", None), id="fifo-state"),
    pytest.param(_fifo("tokens.json"), ("done", ""), ("corrupt", "tokens.json: not a regular file"), id="fifo-tokens"),
    pytest.param(_fifo("spec.json"), ("corrupt", "spec.json: not a regular file"), ("corrupt", "not a regular file"),
                 id="fifo-spec"),
    pytest.param(_write("metrics.json", '{"complete": tr'), ("corrupt", "metrics.json: not valid JSON at line 1"),
                 ("corrupt", "not valid JSON"), id="corrupt-metrics"),
    pytest.param(_edit("metrics.json", complete="yes"),
                 ("corrupt", "metrics.json: complete: expected true or false, got a string"),
                 ("corrupt", "complete: Input should be a valid boolean"), id="complete-yes"),
    pytest.param(_edit("metrics.json", seed="0"), ("done", ""), ("corrupt", "seed: Input should be a valid integer"),
                 id="seed-str"),
    pytest.param(_edit("spec.json", seed=99), ("corrupt", "spec.json: spec does not match folder (it hashes to"),
                 ("mismatch", "hashes to"), id="spec-hash"),
]


@pytest.mark.parametrize("damage, shown, excluded", DAMAGE)
def test_damage_is_reported_and_every_other_job_listed(study, damage, shown, excluded):
    job = _jobs(study)[1]
    damage(job)
    status = _status(study)
    assert len(status) == N_JOBS and all(status[j.name] == ("done", "") for j in _jobs(study) if j != job)
    label, detail = status[job.name]
    assert label == shown[0] and shown[1] in detail, (label, detail)
    got = _aggregate(study)
    assert len(got) == N_JOBS and all(got[j.name] == ("ok", None) for j in _jobs(study) if j != job)
    assert got[job.name][0] == excluded[0] and (excluded[1] or "") in (got[job.name][1] or ""), got[job.name]


def test_status_command_prints_the_table_with_a_fifo_in_place(study):
    _fifo("metrics.json")(_jobs(study)[0])
    out = io.StringIO()
    with deadline():
        status_command(Console(file=out, width=200, color_system=None), study, run_root=None, watch=False, interval=1)
    assert "not a regular file (a FIFO)" in out.getvalue()
    assert out.getvalue().strip().endswith(f"{N_JOBS} jobs: {N_JOBS - 1} done · 1 corrupt")


# ---------------------------------------------------------------- aggregate's terminal output and outputs


def test_aggregate_names_the_excluded_jobs_and_why(tmp_path):
    sj.write_study(tmp_path, "s1", arms=("A", "B", "A@B"), seeds=tuple(range(4)))  # 24 jobs
    jobs = _jobs(tmp_path / "s1")
    for job in jobs[:22]:
        (job / "metrics.json").write_text("{")
    console = Console(record=True, width=200)
    agg.aggregate_command(console, [tmp_path], strict=False, plots=False)
    text = console.export_text()
    assert "2 complete jobs, 22 excluded" in text
    listed = [line for line in text.splitlines() if "metrics.json: not valid JSON at line 1" in line]
    assert len(listed) == 20 and listed[0].split()[0] == jobs[0].name
    assert "… and 2 more (see jobs.csv)" in text


def test_an_unwritable_study_folder_is_one_clean_error(study):
    (study / "aggregate").write_text("in the way")  # as root, chmod would not stop the write
    run = subprocess.run(
        [sys.executable, "-m", "trajhpc.cli", "aggregate", str(study.parent), "--no-plots"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(study) in lines[0] and "cannot write" in lines[0], run.stderr


def test_unwritable_study_folder_in_process(study, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(TrajhpcError, match=rf"{study}: cannot write the results into aggregate/ \(permission denied\)"):
        agg.aggregate_command(Console(file=io.StringIO()), [study], strict=False, plots=False)


def test_jobs_csv_keeps_unreadable_reasons(study, monkeypatch):
    bad = _jobs(study)[2]
    _deny(monkeypatch, bad)
    with deadline():
        (result,) = agg.aggregate([study], resamples=50)
    row = result.jobs.filter(pl.col("job_id") == bad.name).row(0, named=True)
    assert row["status"] == "unreadable" and Path(row["file"]) == bad


# ---------------------------------------------------------------- property: random bytes never break a reader

from conftest import deadline
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
NAMES = ("spec.json", "state.json", "metrics.json", "tokens.json", "submission.json")
CONTRACT_KEYS = ("state", "stage", "n_stages", "error", "complete", "schema", "job_id", "order", "seed", "stages",
                 "local_pid", "slurm_job_id", "condition", "started", "ended")


def _content():
    """Raw bytes, any JSON value, or a real document with one contract key replaced by any JSON value."""
    dumped = JSON.map(lambda v: json.dumps(v).encode())
    replaced = st.tuples(st.sampled_from(CONTRACT_KEYS), JSON).map(lambda kv: {kv[0]: kv[1]})
    return st.one_of(st.binary(max_size=64), dumped, replaced, st.just(b"[" * 3000))


@settings(max_examples=100, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.sampled_from(NAMES), _content()), min_size=1, max_size=3))
def test_random_content_never_breaks_status_or_aggregate(tmp_path_factory, monkeypatch, writes):
    monkeypatch.setattr("trajhpc.launch.slurmquery._run", lambda cmd: None)  # random Slurm ids: never ask a real cluster
    root = tmp_path_factory.mktemp("prop")
    spec = sj.spec_for("A", order=("a", "b"))
    job = sj.write_job(root / "s", spec, [[0.5, 0.5]] * 3)
    other = sj.write_job(root / "s", sj.spec_for("B", order=("a", "b")), [[0.5, 0.5]] * 3)
    for name, content in writes:
        path = job / name
        if isinstance(content, dict):  # one key of the real document replaced
            try:
                doc = json.loads(path.read_bytes())
            except (OSError, ValueError, RecursionError):
                doc = {}
            doc = doc if isinstance(doc, dict) else {}
            doc.update(content)
            content = json.dumps(doc).encode()
        path.write_bytes(content)
    with deadline(10):
        rows = {r.job_id: r for r in collect_rows(find_job_dirs(root))}
        try:
            (result,) = agg.aggregate([root], resamples=20)
        except TrajhpcError:  # the documented user error (none expected with one good job left)
            raise AssertionError("aggregate refused a root holding a good job") from None
    assert set(rows) == {job.name, other.name} and rows[other.name].label == "done"
    statuses = dict(zip(result.jobs["job_id"], result.jobs["status"]))
    assert set(statuses) == {job.name, other.name} and statuses[other.name] == "ok"
    assert statuses[job.name] == "ok" or result.jobs.filter(pl.col("job_id") == job.name)["reason"].item()


# ---------------------------------------------------------------- property: damaged predictions are used whole or named

from trajhpc.jobdir.documents import PredictionRow, adapter, read_job_docs  # noqa: E402

_ROW_KEYS = ("item", "block", "dialogue_key", "step", "exact", "name", "target_kind", "gold_name_in_prompt")


def _damage():
    """One damage to a predictions file: a line replaced by bytes, a field replaced by any JSON value,
    a line dropped or repeated, or the whole file replaced."""
    line = st.integers(min_value=0, max_value=17)
    return st.one_of(
        st.tuples(st.just("bytes"), line, st.binary(max_size=24)),
        st.tuples(st.just("field"), line, st.tuples(st.sampled_from(_ROW_KEYS), JSON)),
        st.tuples(st.just("drop"), line, st.none()),
        st.tuples(st.just("repeat"), line, st.none()),
        st.tuples(st.just("file"), st.just(0), st.binary(max_size=64)),
    )


def _apply(lines: list[bytes], damage) -> list[bytes]:
    kind, at, value = damage
    lines = list(lines)
    if kind == "file":
        return [value or b""]
    if not lines:  # an emptied file has no row to damage further
        return lines
    at %= len(lines)
    if kind == "bytes":
        lines[at] = value
    elif kind == "field":
        try:
            row = json.loads(lines[at])
        except (ValueError, RecursionError):
            return lines
        if isinstance(row, dict):
            row[value[0]] = value[1]
            lines[at] = json.dumps(row).encode()
    elif kind == "drop":
        del lines[at]
    else:
        lines.insert(at, lines[at])
    return lines


def _usable(lines: list[bytes], items: set[str]) -> bool:
    """What the aggregate may use as it stands: every row a valid PredictionRow, each of the study's items once."""
    seen = []
    for line in lines:
        if not line.strip():
            continue
        try:
            seen.append(adapter(PredictionRow).validate_json(line).get("item"))
        except (ValueError, RecursionError):
            return False
    return None not in seen and sorted(seen) == sorted(items)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damages=st.lists(_damage(), min_size=1, max_size=3))
def test_damaged_predictions_are_used_whole_or_named_and_never_break_aggregate(tmp_path_factory, damages):
    root = tmp_path_factory.mktemp("pred")
    jobs = sj.write_study(root, "s", arms=("A", "B"), seeds=(0, 1), orders=[("a", "b", "c")], items=sj.ITEMS)
    victim = jobs[0] / "predictions" / "stage-3.jsonl"
    original = victim.read_bytes().splitlines()
    lines = original
    for damage in damages:
        lines = _apply(lines, damage)
    victim.write_bytes(b"\n".join(lines) + b"\n" if lines else b"")
    with deadline(20):
        (result,) = agg.aggregate([root], resamples=20)
    named = any(jobs[0].name in note for note in result.notes)
    if not _usable(lines, {item[0] for item in sj.ITEMS}):
        # Never a guessed value, never a silently narrower item table: the job is named.
        assert named, (damages, result.notes)
    if named:
        with pytest.raises(TrajhpcError):
            agg.aggregate([root], strict=True, resamples=20)


def test_a_job_directory_written_before_recipe_versions_reads_as_recipe_1(tmp_path):
    """Its spec.json has no ``recipe`` and its folder is named by the id it had then: still ok."""
    old = sj.spec_for("A", order=("a", "b"), recipe=1)
    job = sj.write_job(tmp_path / "s", old, [[0.5, 0.5]] * 3)
    assert "recipe" not in json.loads((job / "spec.json").read_text()) and job.name == old.job_id
    spec, _, _ = read_job_docs(job)
    assert spec.recipe == 1 and spec.job_id == job.name


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


_TRICKY = st.text(alphabet='[]{}"\\ab', max_size=6)  # brackets, quotes and escapes inside strings
_NESTED = st.recursive(
    st.none() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=_NESTED, limit=st.integers(min_value=0, max_value=8), indent=st.sampled_from([None, 1]))
def test_nested_deeper_than_is_the_depth_of_any_json_text(value, limit, indent):
    from trajhpc.jobdir.paths import nested_deeper_than

    raw = json.dumps(value, indent=indent, ensure_ascii=False).encode()
    assert nested_deeper_than(raw, limit) == (_depth(value) > limit)
