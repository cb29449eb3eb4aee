"""train_log.jsonl (trajhpc.jobdir.trainlog): appended per step, torn lines skipped, cut back to the checkpoint on resume."""

from __future__ import annotations

import json
import os

import pytest

from trajhpc.core.errors import TrajhpcError
from trajhpc.jobdir import trainlog


def _entry(stage: int, step: int) -> dict:
    return trainlog.entry(stage=stage, step=step, loss=1.0 / step, lr=1e-3, tokens=10 * step, tokens_per_s=123.456)


def test_entries_are_appended_and_read_back_in_the_documented_shape(tmp_path):
    with trainlog.TrainLog(tmp_path) as log:
        for step in (1, 2):
            log.append(_entry(1, step))
            # flushed at once: a live view reads it while the job runs
            assert len(trainlog.read_train_log(tmp_path)) == step
        log.sync()
    entries = trainlog.read_train_log(tmp_path)
    assert entries == [
        {"stage": 1, "step": 1, "loss": 1.0, "lr": 0.001, "tokens": 10, "tokens_per_s": 123.5},
        {"stage": 1, "step": 2, "loss": 0.5, "lr": 0.001, "tokens": 20, "tokens_per_s": 123.5},
    ]
    assert list(entries[0]) == list(trainlog.FIELDS)
    assert trainlog.read_train_log(tmp_path / "nowhere") == []


def test_torn_and_damaged_lines_are_skipped(tmp_path):
    good = json.dumps(_entry(1, 1))
    (tmp_path / trainlog.TRAIN_LOG).write_text(
        f'{good}\n{{"stage": "1", "step": 2}}\nnot json\n{{"stage": true, "step": 1, "loss": 1, "lr": 1, '
        f'"tokens": 1, "tokens_per_s": 1}}\n{good[:20]}'
    )
    assert trainlog.read_train_log(tmp_path) == [json.loads(good)]
    assert trainlog.tail(tmp_path) == [json.loads(good)]


def test_keep_through_drops_the_stage_being_retrained(tmp_path):
    with trainlog.TrainLog(tmp_path) as log:
        for stage, step in [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]:
            log.append(_entry(stage, step))
    with (tmp_path / trainlog.TRAIN_LOG).open("a") as f:
        f.write('{"stage": 3, "st')  # killed mid-line
    assert trainlog.keep_through(tmp_path, 2) == 4
    assert [(e["stage"], e["step"]) for e in trainlog.read_train_log(tmp_path)] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert (tmp_path / trainlog.TRAIN_LOG).read_text().endswith("}\n")
    assert trainlog.keep_through(tmp_path, 0) == 0  # a fresh start keeps nothing
    assert (tmp_path / trainlog.TRAIN_LOG).read_text() == ""
    assert trainlog.keep_through(tmp_path / "new", 0) == 0 and not (tmp_path / "new").exists()


def test_tail_reads_only_the_end_of_a_long_log(tmp_path):
    with trainlog.TrainLog(tmp_path) as log:
        for step in range(1, 2001):
            log.append(_entry(1, step))
    last = trainlog.tail(tmp_path, window=1024)
    assert 5 < len(last) < 20 and last[-1]["step"] == 2000
    assert [e["step"] for e in last] == list(range(2001 - len(last), 2001))  # the cut first line is dropped


def test_a_fifo_in_place_of_the_log_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / trainlog.TRAIN_LOG)
    assert trainlog.tail(tmp_path) == []
    with pytest.raises(TrajhpcError, match="train_log.jsonl: corrupt: not a regular file"):
        trainlog.keep_through(tmp_path, 1)
