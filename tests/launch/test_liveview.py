"""The live view (trajhpc.launch.liveview): progress from a job's state.json and train_log.jsonl, ETA, table or lines."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from trajhpc.jobdir import trainlog
from trajhpc.jobdir.snapshot import JobFiles
from trajhpc.launch.liveview import Board, EtaClock, JobProgress, fraction_done, progress_of
from trajhpc.launch.status import Row, format_duration


def _state(stage: int, activity=None, state="running", n=4) -> dict:
    return {"state": state, "stage": stage, "n_stages": n, "activity": activity}


def _entries(stage: int, steps: int, tok_s: float = 100.0) -> list[dict]:
    return [trainlog.entry(stage=stage, step=s, loss=2.0 / s, lr=1e-3, tokens=5, tokens_per_s=tok_s) for s in
            range(1, steps + 1)]


@pytest.mark.parametrize(
    "state, complete, entries, expected",
    [
        (None, False, [], JobProgress()),
        # evaluating stage 0 of a fresh job: nothing done yet
        (_state(0, {"phase": "evaluating", "stage": 0}), False, [],
         JobProgress(done=0, n_stages=4, stage=0, phase="evaluating", fraction=0.0)),
        # training stage 2, step 3 of 12, after stages 0 and 1
        (_state(1, {"phase": "training", "stage": 2, "steps": 12}), False, _entries(1, 4, 50.0) + _entries(2, 3),
         JobProgress(done=1, n_stages=4, stage=2, phase="training", step=3, n_steps=12, loss=2.0 / 3,
                  tokens_per_s=100.0, fraction=(3 + 3 / 12) / 9, done_loss=0.5, done_tokens_per_s=50.0)),
        # training stage 2 before its first step: the last loss is stage 1's
        (_state(1, {"phase": "training", "stage": 2, "steps": 12}), False, _entries(1, 4, 50.0),
         JobProgress(done=1, n_stages=4, stage=2, phase="training", step=0, n_steps=12, loss=0.5, tokens_per_s=50.0,
                  fraction=3 / 9, done_loss=0.5, done_tokens_per_s=50.0)),
        # evaluating stage 2 (trained): 4 of 9 parts done
        (_state(1, {"phase": "evaluating", "stage": 2}), False, _entries(2, 12),
         JobProgress(done=1, n_stages=4, stage=2, phase="evaluating", loss=2.0 / 12, tokens_per_s=100.0,
                  fraction=4 / 9)),
        # a failed job says nothing of an activity
        (_state(2, {"phase": "training", "stage": 3, "steps": 5}, state="failed"), False, [],
         JobProgress(done=2, n_stages=4, stage=2, fraction=5 / 9)),
        # damaged activity values are ignored
        (_state(1, {"phase": "dancing", "stage": "2"}), False, [], JobProgress(done=1, n_stages=4, stage=1, fraction=3 / 9)),
        (_state(4, state="done"), True, _entries(4, 2), JobProgress(done=4, n_stages=4, stage=4, loss=1.0,
                                                                 tokens_per_s=100.0, fraction=1.0, done_loss=1.0,
                                                                 done_tokens_per_s=100.0)),
    ],
)
def test_progress_of(state, complete, entries, expected):
    got, want = dataclasses.asdict(progress_of(state, complete, entries)), dataclasses.asdict(expected)
    assert got.keys() == want.keys()
    for key in got:
        assert got[key] == (pytest.approx(want[key]) if isinstance(want[key], float) else want[key]), key


def test_fraction_counts_evaluations_and_trainings_alike():
    assert fraction_done(2, 0, "evaluating", 0, 0, 0) == 0.0
    assert fraction_done(2, 0, "training", 1, 5, 10) == pytest.approx(1.5 / 5)
    assert fraction_done(2, 2, None, None, 0, 0) == 1.0
    assert fraction_done(None, 0, None, None, 0, 0) is None


def test_eta_from_the_pace_since_first_seen():
    eta = EtaClock()
    assert eta("j", 0.2, 100.0) is None  # first sight: no pace yet
    assert eta("j", 0.4, 110.0) == pytest.approx(10.0 / 0.2 * 0.6)
    assert eta("j", 0.1, 120.0) is None  # started over (resumed): measured afresh
    assert eta("j", 0.55, 129.0) == pytest.approx(9.0 / 0.45 * 0.45)
    assert eta("j", 1.0, 130.0) is None and eta("k", None, 1.0) is None


def _job(tmp_path: Path, job_id: str, state: dict | None, entries=()) -> tuple[JobFiles, Row]:
    d = tmp_path / job_id
    d.mkdir()
    if entries:
        (d / trainlog.TRAIN_LOG).write_text("".join(json.dumps(e) + "\n" for e in entries))
    files = JobFiles(job_id, d, None, state, False, None)
    label = "running" if state and state["state"] == "running" else "waiting"
    return files, Row(job_id, "A", "0", "ca>mt", "–", label, "1/4 stages" if state else "", "1m00s" if state else "")


def test_plain_lines_say_when_a_job_finished_a_stage(tmp_path):
    out = io.StringIO()
    now = [0.0]
    board = Board(Console(file=out, width=80, color_system=None), "study s", labels=True, tables=False,
                  clock=lambda: now[0])
    with board:
        f, r = _job(tmp_path, "j1", _state(1, {"phase": "training", "stage": 2, "steps": 4}), _entries(1, 4))
        board.show([f], [r], [board.progress(f)])
        assert out.getvalue() == ""  # first sight: nothing happened yet
        now[0] = 30.0
        # stage 2 is done and stage 3 already has a step: the line reports stage 2's last step
        entries = _entries(1, 4) + _entries(2, 4, 300.0) + _entries(3, 1, 7.0)
        (f.run_dir / trainlog.TRAIN_LOG).write_text("".join(json.dumps(e) + "\n" for e in entries))
        f2 = JobFiles("j1", f.run_dir, None, _state(2, {"phase": "training", "stage": 3, "steps": 4}), False, None)
        board.show([f2], [r], [board.progress(f2)])
        r3 = Row("j1", "A", "0", "ca>mt", "–", "failed", "RuntimeError: boom", "2m00s")
        board.show([f2], [r3], [board.progress(f2)])
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("j1 A seed 0 ca>mt: stage 2/4 done (loss 0.500, 300 tok/s, ETA ")
    assert lines[1] == "j1 A seed 0 ca>mt: failed (RuntimeError: boom)"
    assert len(lines) == 2 and "\x1b" not in out.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_the_live_table_fits_and_shows_stage_step_loss_tok_s_and_eta(tmp_path, width):
    from conftest import assert_fits

    out = io.StringIO()
    now = [0.0]
    console = Console(file=out, width=width, force_terminal=True, color_system=None, legacy_windows=False)
    jobs = [
        _job(tmp_path, "aaaaaaaaaaa1", _state(1, {"phase": "training", "stage": 2, "steps": 12}), _entries(2, 3, 2345.0)),
        _job(tmp_path, "aaaaaaaaaaa2", _state(0, {"phase": "evaluating", "stage": 0}), []),
        _job(tmp_path, "aaaaaaaaaaa3", None),
    ]
    board = Board(console, "study s", labels=False, tables=False, clock=lambda: now[0])
    with board:
        for t in (0.0, 10.0):
            now[0] = t
            files, rows = zip(*jobs)
            board.show(list(files), list(rows), [board.progress(f) for f in files])
            if t == 0.0:  # the pace needs a second look: one more step
                entries = _entries(2, 4, 2345.0)
                (tmp_path / "aaaaaaaaaaa1" / trainlog.TRAIN_LOG).write_text(
                    "".join(json.dumps(e) + "\n" for e in entries))
    text = out.getvalue()
    final = text[text.rindex("study s"):]
    assert_fits(final.replace("\x1b", ""), width, ["arm", "state", "stage", "step", "loss", "tok/s", "ETA"])
    assert "2/4" in final and "4/12" in final and "eval" in final and "0.500" in final and "2,345" in final
    f0, f1 = (3 + 3 / 12) / 9, (3 + 4 / 12) / 9  # one step of 12 of stage 2 (of 9 parts) in 10 s
    assert format_duration(10 * (1 - f1) / (f1 - f0)) in final
    assert "1/4 stages" not in final  # the stage column says it
    assert "waiting" in final
