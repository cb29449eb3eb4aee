"""Status: the pure state rules (table-driven), reading job directories, asking Slurm, rendering."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from trajhpc.core.errors import TrajhpcError, last_line
from trajhpc.jobdir.paths import find_job_dirs
from trajhpc.jobdir.snapshot import read_job_dir
from trajhpc.launch.liveview import watch_rows
from trajhpc.launch.slurmquery import normalize_slurm_state, query_slurm
from trajhpc.launch.status import (
    GONE,
    UNKNOWN,
    collect_rows,
    counts_line,
    decide,
    display_state,
    elapsed_seconds,
    format_duration,
    local_alive,
    render_table,
)
from trajhpc.launch.statuscmd import status_command

NOW = dt.datetime(2026, 1, 2, 12, 0, 0, tzinfo=dt.timezone.utc)


def _state(state: str, stage: int, n: int = 4, error: str | None = None, ended: str | None = None) -> dict:
    return {
        "state": state, "stage": stage, "n_stages": n, "error": error,
        "started": "2026-01-02T11:00:00+00:00", "updated": "2026-01-02T11:30:00+00:00", "ended": ended,
        "slurm_job_id": None,
    }


# ---------------------------------------------------------------- resubmission rule

DECISIONS = [
    # (metrics complete?, scheduler state) -> action
    (True, None, "skip"),
    (True, "RUNNING", "skip"),
    (True, "FAILED", "skip"),
    (True, GONE, "skip"),
    (False, None, "submit"),  # never submitted
    (False, "PENDING", "leave"),
    (False, "RUNNING", "leave"),
    (False, "REQUEUED", "leave"),
    (False, "REQUEUE_HOLD", "leave"),
    (False, "COMPLETING", "leave"),
    (False, "SUSPENDED", "leave"),
    (False, "CONFIGURING", "leave"),
    (False, "FAILED", "submit"),
    (False, "CANCELLED", "submit"),
    (False, "TIMEOUT", "submit"),
    (False, "OUT_OF_MEMORY", "submit"),
    (False, "NODE_FAIL", "submit"),
    (False, "PREEMPTED", "submit"),
    (False, "COMPLETED", "submit"),  # exited 0 without complete metrics
    (False, GONE, "submit"),  # purged from Slurm / local process gone
    (False, UNKNOWN, "leave"),  # Slurm unreachable: never risk running a job twice
]


@pytest.mark.parametrize("complete, sched, action", DECISIONS)
def test_decide(complete, sched, action):
    assert decide(complete, sched) == action


# ---------------------------------------------------------------- display state

DISPLAY = [
    # (state.json, metrics complete?, scheduler state) -> (label, detail)
    (None, False, None, ("not submitted", "")),
    (None, True, None, ("done", "")),
    (_state("done", 4), True, "COMPLETED", ("done", "")),
    (_state("running", 4), True, "RUNNING", ("done", "")),  # metrics are the truth
    (None, False, "PENDING", ("pending", "")),
    (_state("running", 2), False, "PENDING", ("pending", "resumes after 2/4 stages")),
    (_state("failed", 1, error="x"), False, "REQUEUED", ("pending", "resumes after 1/4 stages")),
    (None, False, "RUNNING", ("running", "starting")),
    (_state("running", 0), False, "RUNNING", ("running", "0/4 stages")),
    (_state("running", 3), False, "RUNNING", ("running", "3/4 stages")),
    (_state("running", 1), False, None, ("running", "1/4 stages")),  # run by hand, no record
    (_state("failed", 2, error="Traceback\n  ...\nValueError: boom"), False, None, ("failed", "ValueError: boom")),
    (_state("failed", 2, error="CUDA out of memory"), False, "FAILED", ("failed", "CUDA out of memory")),
    (_state("running", 2), False, "FAILED", ("failed", "FAILED after 2/4 stages")),
    (_state("running", 2), False, "TIMEOUT", ("failed", "TIMEOUT after 2/4 stages")),
    (None, False, "OUT_OF_MEMORY", ("failed", "OUT_OF_MEMORY")),
    (_state("running", 1), False, "CANCELLED", ("cancelled", "1/4 stages")),
    (_state("failed", 1, error="KeyboardInterrupt"), False, "CANCELLED", ("cancelled", "1/4 stages")),
    (_state("running", 3), False, GONE, ("failed", "ended without finishing after 3/4 stages")),
    (None, False, GONE, ("failed", "ended without finishing")),
    (_state("running", 4), False, "COMPLETED", ("failed", "exited without finishing after 4/4 stages")),
    (_state("done", 4), False, None, ("failed", "state.json says done but metrics.json is not complete")),
    (None, False, UNKNOWN, ("pending", "Slurm not reachable")),  # Slurm down: the job directory is all we know
    (_state("running", 2), False, UNKNOWN, ("running", "2/4 stages")),
]


@pytest.mark.parametrize("state, complete, sched, expected", DISPLAY)
def test_display_state(state, complete, sched, expected):
    assert display_state(state, complete, sched) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [("CANCELLED by 0", "CANCELLED"), ("RUNNING", "RUNNING"), ("completed+", "COMPLETED"), ("", GONE)],
)
def test_normalize_slurm_state(raw, expected):
    assert normalize_slurm_state(raw) == expected


def test_last_line_and_durations():
    assert last_line("a\nb\n\n") == "b" and last_line(None) == ""
    assert last_line("x" * 200, width=10) == "x" * 9 + "…"
    assert [format_duration(s) for s in (None, 0, 42.4, 65, 3599, 3600, 7325)] == [
        "", "0s", "42s", "1m05s", "59m59s", "1h00m", "2h02m"
    ]


def test_elapsed_seconds():
    assert elapsed_seconds(_state("running", 1), running=True, now=NOW) == 3600
    assert elapsed_seconds(_state("failed", 1), running=False, now=NOW) == 1800  # to the last update
    assert elapsed_seconds(_state("done", 4, ended="2026-01-02T11:10:05+00:00"), running=False, now=NOW) == 605
    assert elapsed_seconds(None, running=True, now=NOW) is None
    assert elapsed_seconds({"started": "garbage"}, running=True, now=NOW) is None


# ---------------------------------------------------------------- job directories


def _job(root: Path, job_id: str, *, condition="A", seed=0, state=None, complete=None, record=None, k=None) -> Path:
    d = root / job_id
    d.mkdir(parents=True)
    spec = {"condition": condition, "condition_k": k, "seed": seed, "order": ["b1", "b2", "b3", "b4"], "token_budget": None}
    if condition == "A@B":
        spec.update(condition="A", token_budget={"match": "B", "count": "total"})
    (d / "spec.json").write_text(json.dumps(spec))
    if state is not None:
        (d / "state.json").write_text(json.dumps(state))
    if complete is not None:
        (d / "metrics.json").write_text(json.dumps({"complete": complete, "stages": []}))
    if record is not None:
        (d / "submission.json").write_text(json.dumps(record))
    return d


def test_read_job_dir(tmp_path):
    d = _job(tmp_path, "j1", state=_state("running", 1), complete=False)
    (d / "submission.json").write_text("{not json")  # unreadable files read as absent
    files = read_job_dir(d)
    assert files.job_id == "j1" and files.state["stage"] == 1 and files.complete is False and files.record is None
    assert read_job_dir(tmp_path / "missing", spec={"seed": 3}).spec == {"seed": 3}


def test_find_job_dirs_at_every_level(tmp_path):
    a = _job(tmp_path / "study1", "j1")
    b = _job(tmp_path / "study2", "j2")
    _job(tmp_path / "study1" / ".submitit", "junk")  # submitit's folder is not a job
    assert find_job_dirs(tmp_path) == [a, b]
    assert find_job_dirs(tmp_path / "study1") == [a]
    assert find_job_dirs(a) == [a]


# ---------------------------------------------------------------- asking Slurm (fake sacct/squeue on PATH)


def _fake(bin_dir: Path, name: str, output: str, rc: int = 0) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir}/{name}.calls\ncat <<'EOF'\n{output}EOF\nexit {rc}\n")
    script.chmod(0o755)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def test_query_slurm_one_sacct_call_with_array_ranges(fake_bin):
    _fake(fake_bin, "sacct", "JobID|State|NodeList\n7_0|COMPLETED|vm\n7_1|CANCELLED by 0|vm\n7_[2-4%2]|PENDING|\n9|RUNNING|vm\n")
    _fake(fake_bin, "squeue", "")
    got = query_slurm(["7_0", "7_1", "7_3", "9"])
    assert {i: info.state for i, info in got.items()} == {"7_0": "COMPLETED", "7_1": "CANCELLED", "7_3": "PENDING", "9": "RUNNING"}
    assert (fake_bin / "sacct.calls").read_text().splitlines() == ["-X --parsable2 -o JobID,State,NodeList,JobName -j 7,9"]
    assert not (fake_bin / "squeue.calls").exists()  # sacct knew them all


def test_query_slurm_asks_squeue_for_what_sacct_lacks(fake_bin):
    # sacct lags: it does not list 8_1 yet; squeue (the controller) does.
    _fake(fake_bin, "sacct", "JobID|State|NodeList|JobName\n8_0|RUNNING|vm|trajhpc-st\n")
    _fake(fake_bin, "squeue", "8_0|RUNNING|vm|trajhpc-st\n8_1|PENDING||trajhpc-st\n99_0|RUNNING|vm|x\n")
    got = query_slurm(["8_0", "8_1", "8_2"])
    assert got == {"8_0": ("RUNNING", "trajhpc-st"), "8_1": ("PENDING", "trajhpc-st")}
    # by the recorded ids, not by user: in a shared study a colleague's jobs are not GONE
    assert (fake_bin / "squeue.calls").read_text().splitlines() == ["-h --states=all -j 8 -o %i|%T|%N|%j"]


def test_query_slurm_sees_a_colleagues_jobs(fake_bin):
    """squeue answers only for the ids asked (a `-u me` query would not list them)."""
    _fake(fake_bin, "sacct", "", rc=1)  # no accounting
    (fake_bin / "squeue").write_text(
        "#!/bin/sh\ncase \"$*\" in *'-j 12,13'*) printf '12_0|RUNNING|vm|trajhpc-st\\n13|PENDING||trajhpc-st\\n';; esac\n"
    )
    (fake_bin / "squeue").chmod(0o755)
    assert {i: info.state for i, info in query_slurm(["12_0", "13"]).items()} == {"12_0": "RUNNING", "13": "PENDING"}


def test_squeue_invalid_job_id_is_an_answer_not_an_outage(fake_bin):
    _fake(fake_bin, "sacct", "", rc=1)
    (fake_bin / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    (fake_bin / "squeue").chmod(0o755)
    assert query_slurm(["5_0"]) == {}


def test_query_slurm_falls_back_to_squeue_without_accounting(fake_bin):
    _fake(fake_bin, "sacct", "", rc=1)
    _fake(fake_bin, "squeue", "5_0|COMPLETED|vm\n")
    assert {i: info.state for i, info in query_slurm(["5_0", "5_1"]).items()} == {"5_0": "COMPLETED"}


def test_query_slurm_error_when_slurm_is_unreachable(fake_bin):
    _fake(fake_bin, "sacct", "", rc=1)
    _fake(fake_bin, "squeue", "", rc=1)
    with pytest.raises(TrajhpcError, match="cannot ask Slurm about the recorded jobs"):
        query_slurm(["5_0"])


def test_query_slurm_without_ids_runs_nothing(fake_bin):
    _fake(fake_bin, "sacct", "", rc=1)
    assert query_slurm([]) == {}
    assert not (fake_bin / "sacct.calls").exists()


def test_local_alive_checks_the_controller_command_line(tmp_path):
    proc = subprocess.Popen(["sh", "-c", "sleep 30", "sh", str(tmp_path / "folder")])
    try:
        for _ in range(100):  # until the child has exec'd (before, its cmdline is ours)
            if Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sh"):
                break
            time.sleep(0.01)
        assert local_alive(proc.pid, str(tmp_path / "folder"))
        assert not local_alive(proc.pid, str(tmp_path / "other"))  # pid reused by someone else
    finally:
        proc.kill()
        proc.wait()
    assert not local_alive(proc.pid, str(tmp_path / "folder"))


# ---------------------------------------------------------------- rendering (golden)


def _study(root: Path, fake_bin: Path) -> Path:
    """Seven jobs in every state; Slurm answers through the fake sacct."""
    study = root / "jobs" / "st"
    rec = lambda sid: {"executor": "slurm", "slurm_job_id": sid, "local_pid": None}  # noqa: E731
    _job(study, "aaaaaaaaaaa1", state=_state("done", 4, ended="2026-01-02T11:42:00+00:00"), complete=True, record=rec("3_0"))
    _job(study, "aaaaaaaaaaa2", seed=1, state=_state("running", 2), complete=False, record=rec("3_1"))
    _job(study, "aaaaaaaaaaa3", condition="B", record=rec("3_2"))
    _job(study, "aaaaaaaaaaa4", condition="B", seed=1, state=_state("failed", 1, error="Traceback\nRuntimeError: CUDA error"), complete=False, record=rec("3_3"))
    _job(study, "aaaaaaaaaaa5", condition="A@B", state=_state("running", 3), complete=False, record=rec("3_4"))
    _job(study, "aaaaaaaaaaa6", condition="last-k", k=2, state=_state("running", 1), record=rec("2_0"))
    _job(study, "aaaaaaaaaaa7", condition="A@B", seed=1)
    _fake(fake_bin, "sacct", "JobID|State|NodeList\n3_0|COMPLETED|vm\n3_1|RUNNING|vm\n3_2|PENDING|\n3_3|FAILED|vm\n3_4|CANCELLED by 0|vm\n")
    _fake(fake_bin, "squeue", "3_1|RUNNING|vm\n")
    return study


def test_status_table_golden(tmp_path, fake_bin, golden):
    study = _study(tmp_path, fake_bin)
    rows = collect_rows(find_job_dirs(study), now=NOW)
    out = io.StringIO()
    console = Console(file=out, width=140, color_system=None, legacy_windows=False)
    console.print(render_table(rows, "study st", width=140))
    console.print(counts_line(rows))
    golden("status_table.txt", out.getvalue())
    # one sacct call for all recorded ids (squeue only for the two sacct lacks)
    assert len((fake_bin / "sacct.calls").read_text().splitlines()) == 1


def test_counts_line():
    rows = collect_rows([], now=NOW)
    assert counts_line(rows) == "0 jobs: none"


def test_status_command_on_a_manifest_shows_unsubmitted_jobs(tmp_path, fake_bin, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text("study: st\nconditions: [A]\nseeds: [0, 1]\norders: [[care-appointments]]\n")
    out = io.StringIO()
    status_command(Console(file=out, width=200, color_system=None), Path("m.yaml"), run_root=None, watch=False, interval=1)
    text = out.getvalue()
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and all("not submitted" in r and " ca " in r for r in rows)
    assert "study st (m.yaml)" in text
    assert text.strip().endswith("2 jobs: 2 not submitted")


def test_status_command_missing_target(tmp_path):
    with pytest.raises(TrajhpcError, match="nowhere: no such manifest or run directory"):
        status_command(Console(file=io.StringIO()), tmp_path / "nowhere", run_root=None, watch=False, interval=1)


def test_a_reused_slurm_id_is_not_our_job(tmp_path, fake_bin):
    """After a cluster's state is wiped, ids restart: a recorded id now naming another job is GONE."""
    rec = {"executor": "slurm", "slurm_job_id": "4_0", "slurm_job_name": "trajhpc-st"}
    ours = _job(tmp_path, "j1", state=_state("running", 1), record=rec)
    theirs = _job(tmp_path, "j2", state=_state("running", 1), record=rec | {"slurm_job_id": "4_1"})
    _fake(fake_bin, "sacct", "JobID|State|NodeList|JobName\n4_0|RUNNING|vm|trajhpc-st\n4_1|RUNNING|vm|someone-else\n")
    rows = collect_rows([ours, theirs], now=NOW)
    assert [(r.slurm, r.label) for r in rows] == [("RUNNING", "running"), ("not found", "failed")]


def test_a_job_that_died_before_state_json_shows_its_stderr(tmp_path, fake_bin):
    log = tmp_path / "7_0_0_log.err"
    log.write_text("Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'trajhpc'\n\n")
    rec = {"executor": "slurm", "slurm_job_id": "7_0", "slurm_job_name": "trajhpc-st", "stderr": str(log)}
    died = _job(tmp_path, "j1", record=rec)
    unlogged = _job(tmp_path, "j2", record=rec | {"slurm_job_id": "7_1", "stderr": str(tmp_path / "missing.err")})
    _fake(fake_bin, "sacct", "JobID|State|NodeList|JobName\n7_0|FAILED|vm|trajhpc-st\n7_1|FAILED|vm|trajhpc-st\n")
    rows = collect_rows([died, unlogged], now=NOW)
    assert [(r.label, r.detail) for r in rows] == [
        ("failed", "ModuleNotFoundError: No module named 'trajhpc'"), ("failed", "FAILED")
    ]


def test_a_task_cancelled_before_it_started_is_cancelled(tmp_path, fake_bin):
    """Slurm drops a pending array task that is cancelled (sacct and squeue list only the others)."""
    rec = {"executor": "slurm", "slurm_job_name": "trajhpc-st"}
    dirs = [
        _job(tmp_path, "j0", state=_state("running", 1), record=rec | {"slurm_job_id": "5_0"}),
        _job(tmp_path, "j1", record=rec | {"slurm_job_id": "5_1", "stderr": str(tmp_path / "5_1_0_log.err")}),
        _job(tmp_path, "j2", record=rec | {"slurm_job_id": "5_2"}),
        _job(tmp_path, "j3", record=rec | {"slurm_job_id": "6_0"}),  # a whole array Slurm forgot
        _job(tmp_path, "j4", record=rec | {"slurm_job_id": "5_4", "stderr": str(tmp_path / "5_4_0_log.err")}),
    ]
    (tmp_path / "5_4_0_log.err").write_text("started, then vanished\n")
    _fake(fake_bin, "sacct", "JobID|State|NodeList|JobName\n5_0|RUNNING|vm|trajhpc-st\n5_[2,3%1]|PENDING||trajhpc-st\n")
    _fake(fake_bin, "squeue", "5_0|RUNNING|vm|trajhpc-st\n5_[2,3%1]|PENDING||trajhpc-st\n")
    rows = collect_rows(dirs, now=NOW)
    assert [(r.slurm, r.label) for r in rows] == [
        ("RUNNING", "running"), ("CANCELLED", "cancelled"), ("PENDING", "pending"), ("not found", "failed"),
        ("not found", "failed"),
    ]


def test_status_without_slurm_shows_what_the_directories_say(tmp_path, fake_bin):
    rec = {"executor": "slurm", "slurm_job_id": "4_0", "slurm_job_name": "trajhpc-st"}
    d = _job(tmp_path, "j1", state=_state("running", 2), record=rec)
    _fake(fake_bin, "sacct", "", rc=1)
    _fake(fake_bin, "squeue", "", rc=1)
    assert [(r.slurm, r.label, r.detail) for r in collect_rows([d], now=NOW)] == [("?", "running", "2/4 stages")]


def test_watch_refreshes_until_no_job_is_active(tmp_path, monkeypatch):
    """--wait/--watch: the Live table is rebuilt every interval; with until_idle it stops once nothing runs."""
    d = _job(tmp_path, "j1", state=_state("running", 1), record={"executor": "local", "local_pid": os.getpid(),
                                                                  "submitit_folder": ""})
    monkeypatch.setattr("trajhpc.launch.status.local_alive", lambda pid, folder: not (d / "metrics.json").exists())
    sleeps = []

    def fake_sleep(seconds):  # the job finishes during the first wait
        sleeps.append(seconds)
        (d / "metrics.json").write_text('{"complete": true}')

    monkeypatch.setattr("trajhpc.launch.liveview.time.sleep", fake_sleep)
    out = io.StringIO()
    rows = watch_rows(Console(file=out, width=120, color_system=None), lambda: [d], "study st", 2.5, until_idle=True)
    assert sleeps == [2.5] and [r.label for r in rows] == ["done"]
    assert "1 job: 1 done" in out.getvalue()


def test_arm_column_names_arms_as_jobspec_does():
    from trajhpc.launch.status import _arm
    from trajhpc.spec import JobSpec, TokenBudget

    for budget in (None, TokenBudget(match="B", count="supervised"), TokenBudget(match="B", count="total")):
        spec = JobSpec(condition="A", order=("x",), token_budget=budget)
        assert _arm(spec.to_dict()) == spec.arm
    assert _arm(JobSpec(condition="last-k", condition_k=2, order=("x",)).to_dict()) == "last-2"


def test_short_order_uses_block_initials_unless_ambiguous():
    from trajhpc.launch.status import short_order

    order = ["care-appointments", "medication-treatment", "mental-wellness-fitness", "cost-insurance-other"]
    assert short_order(order) == "ca>mt>mwf>cio"
    assert short_order(["ab-c", "ax-cy"]) == "ab-c>ax-cy"  # both would be "ac"
    assert short_order([]) == ""


@pytest.mark.parametrize(
    "sched, expected",
    [
        (None, ("interrupted", "after 2/4 stages")),  # Ctrl-C on a run-job by hand
        (GONE, ("interrupted", "after 2/4 stages")),  # a local submit interrupted
        ("RUNNING", ("running", "2/4 stages")),  # requeued and running again
        ("CANCELLED", ("cancelled", "2/4 stages")),
    ],
)
def test_an_interrupted_job_is_shown_as_such(sched, expected):
    assert display_state(_state("interrupted", 2), False, sched) == expected
    assert decide(False, sched) == ("leave" if sched == "RUNNING" else "submit")  # resumed by the next submit


# ---------------------------------------------------------------- fits the terminal, grouped by study


@pytest.mark.parametrize("width", [80, 120])
def test_status_table_fits_the_width_without_squeezing_a_column(tmp_path, fake_bin, width):
    from conftest import assert_fits

    study = _study(tmp_path, fake_bin)
    long_error = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)"
    _job(study, "aaaaaaaaaaa8", seed=2, state=_state("failed", 1, error=long_error), record={"executor": "local"})
    rows = collect_rows(find_job_dirs(study), now=NOW)
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render_table(rows, "study st", width=width))
    text = out.getvalue()
    assert_fits(text, width, ["arm", "state", "detail"])
    assert all(r.arm in text and r.label in text for r in rows)
    assert "allocate" in text and "capacity)" in text  # the error folds onto more lines, whole
    if width == 80:
        assert "not shown at 80 columns: order, slurm, elapsed" in text and "job id" in text
    else:
        assert "not shown" not in text and "elapsed" in text and "job id" in text


def test_status_of_a_run_root_is_one_table_per_study_with_arms_in_manifest_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("study: two\nconditions: [B, A]\n")
    record = {"executor": "local", "local_pid": None, "manifest": str(manifest)}
    for job_id, condition, seed in [("c1", "A", 1), ("c2", "B", 1), ("c3", "A", 0), ("c4", "B", 0)]:
        _job(tmp_path / "jobs" / "two", job_id, condition=condition, seed=seed, record=record)
    for job_id, condition in [("d1", "B", ), ("d2", "A")]:
        _job(tmp_path / "jobs" / "one", job_id, condition=condition)  # no record: arms by name
    out = io.StringIO()
    status_command(Console(file=out, width=80, color_system=None), None, run_root=None, watch=False, interval=1)
    text = out.getvalue()
    assert text.index("study one") < text.index("study two")
    rows = [line.split("│")[1:3] for line in text.splitlines() if line.startswith("│")]
    assert [(job.strip(), arm.strip()) for job, arm in rows] == [
        ("d2", "A"), ("d1", "B"), ("c4", "B"), ("c2", "B"), ("c3", "A"), ("c1", "A"),
    ]
    assert "2 jobs: 2 not submitted" in text and "4 jobs: 4 not submitted" in text
    assert text.strip().endswith("jobs: 6 jobs: 6 not submitted")
    out = io.StringIO()  # one study: one table, titled by it
    status_command(Console(file=out, width=80, color_system=None), Path("jobs/one"), run_root=None, watch=False,
                   interval=1)
    assert "study one (jobs/one)" in out.getvalue() and out.getvalue().strip().endswith("2 jobs: 2 not submitted")


def test_arms_follow_the_overrides_a_record_lists(tmp_path, monkeypatch):
    """A study submitted with --set conditions=... lists its arms in the order the override gave."""
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("study: two\nconditions: [A, B]\n")  # the file's order, and the order by name
    record = {"executor": "local", "local_pid": None, "manifest": str(manifest), "overrides": ["conditions=[B, A]"]}
    for job_id, condition in [("c1", "A"), ("c2", "B")]:
        _job(tmp_path / "jobs" / "two", job_id, condition=condition, record=record)
    out = io.StringIO()
    status_command(Console(file=out, width=80, color_system=None), None, run_root=None, watch=False, interval=1)
    rows = [line.split("│")[1:3] for line in out.getvalue().splitlines() if line.startswith("│")]
    assert [(job.strip(), arm.strip()) for job, arm in rows] == [("c2", "B"), ("c1", "A")]


def test_watch_on_a_run_root_groups_by_study_and_adds_progress(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    running = _state("running", 1) | {"activity": {"phase": "training", "stage": 2, "steps": 10}}
    d = _job(tmp_path / "jobs" / "s1", "e1", state=running, record={"executor": "local", "local_pid": os.getpid(),
                                                                      "submitit_folder": ""})
    (d / "train_log.jsonl").write_text(json.dumps({"stage": 2, "step": 4, "loss": 1.25, "lr": 0.001, "tokens": 9,
                                                   "tokens_per_s": 1500.0}) + "\n")
    _job(tmp_path / "jobs" / "s2", "e2")
    monkeypatch.setattr("trajhpc.launch.status.local_alive", lambda pid, folder: True)

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("trajhpc.launch.liveview.time.sleep", interrupt)
    out = io.StringIO()
    status_command(Console(file=out, width=120, color_system=None), None, run_root=None, watch=True, interval=1)
    text = out.getvalue()
    final = text[text.rindex("study s1"):]
    assert final.index("study s1") < final.index("study s2")
    assert "2/4" in final and "4/10" in final and "1.250" in final and "1,500" in final
    assert final.strip().endswith("jobs: 2 jobs: 1 running · 1 not submitted")
