"""The checkpoint folder at its file boundary (trajhpc.job.checkpoint): its state read back typed and
written byte-identically, and every file checked before it is read: a FIFO or a huge file in
place of one is refused at once with a TrajhpcError naming it, never waited on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import deadline

from trajhpc.core.atomic import atomic_write_json
from trajhpc.core.errors import TrajhpcError
from trajhpc.job import checkpoint
from trajhpc.job.checkpoint import Checkpoint, CheckpointState, find_checkpoint, load_tensors, restore_checkpoint
from trajhpc.jobdir.paths import CheckpointDir, JobDir

# trainer_state.json as trajhpc has always written it (stage 1 of a job with a token budget).
OLD_STATE = {
    "job_id": "0123456789ab", "stage": 1, "consumed": 812, "train_loss": 1.25, "train_seconds": 3.5,
    "tokens": {"stage": 1, "block": "a", "examples": 4, "prompt_tokens": 900, "supervised_tokens": 40,
               "total_tokens": 940, "padded_tokens": 1000, "passes": 1, "truncated_examples": 0,
               "budget_cumulative": 812},
}


EMPTY_SAFETENSORS = (2).to_bytes(8, "little") + b"{}"  # a complete safetensors file of no tensors


def _checkpoint(job_dir: Path) -> CheckpointDir:
    """A complete checkpoint folder, as far as its files' presence goes (the tensor files hold no tensors)."""
    files = CheckpointDir(JobDir(job_dir).checkpoint)
    files.adapter.mkdir(parents=True)
    files.adapter_config.write_text(json.dumps({"target_modules": ["q_proj"]}))
    for path in (files.optimizer, files.scheduler, files.rng):
        path.write_bytes(b"not read here")
    files.adapter_weights.write_bytes(EMPTY_SAFETENSORS)  # its header is checked, so it has one
    atomic_write_json(files.state, OLD_STATE)
    return files


def test_the_state_round_trips_byte_identically_and_an_old_checkpoint_loads(tmp_path):
    files = _checkpoint(tmp_path)
    found = find_checkpoint(tmp_path)
    assert isinstance(found, Checkpoint) and found.path == files.path and found.files == files
    assert found.state == CheckpointState(**OLD_STATE)
    written = tmp_path / "again.json"
    atomic_write_json(written, found.state.to_dict())
    assert written.read_bytes() == files.state.read_bytes()
    assert find_checkpoint(tmp_path / "nothing-here") is None


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"stage": "1"}, "stage '1', not an integer from 0"),
        ({"stage": -1}, "stage -1, not an integer from 0"),
        ({"consumed": True}, "consumed True, not an integer"),
        ({"tokens": None}, "tokens None, not an object"),
        ({"job_id": None}, "job_id None, not a string"),
    ],
)
def test_a_state_of_the_wrong_shape_is_refused_naming_the_file(tmp_path, change, reason):
    files = _checkpoint(tmp_path)
    atomic_write_json(files.state, OLD_STATE | change)
    with pytest.raises(TrajhpcError, match=re.escape(f"{files.state}: not a trajhpc checkpoint state ({reason}); "
                                                     f"delete {tmp_path} to start the job over")):
        find_checkpoint(tmp_path)
    atomic_write_json(files.state, {k: v for k, v in OLD_STATE.items() if k != "tokens"})
    with pytest.raises(TrajhpcError, match=re.escape("(tokens missing)")):
        find_checkpoint(tmp_path)


@pytest.mark.parametrize("which", ["state", "adapter_config"])
@pytest.mark.parametrize("damage", ["fifo", "huge", "not json"])
def test_a_fifo_or_oversized_state_or_config_file_is_refused_at_once_naming_it(tmp_path, which, damage):
    files = _checkpoint(tmp_path)
    path = getattr(files, which)
    path.unlink()
    if damage == "fifo":
        os.mkfifo(path)
        reason = "corrupt: not a regular file (a FIFO)"
    elif damage == "huge":
        path.write_text('{"x": "' + "y" * checkpoint.JSON_MAX_BYTES + '"}')
        reason = f"corrupt: larger than {checkpoint.JSON_MAX_BYTES:,} bytes"
    else:
        path.write_text('{"stage": 1,')
        reason = "corrupt: not valid JSON at line 1"
    with deadline(), pytest.raises(TrajhpcError, match=re.escape(f"{path}: {reason}")) as caught:
        find_checkpoint(tmp_path)
    assert f"delete {tmp_path} to start the job over" in str(caught.value)


def test_the_adapter_config_is_read_bounded_when_written_too(tmp_path):
    os.mkfifo(tmp_path / "adapter_config.json")
    with deadline(), pytest.raises(TrajhpcError, match=r"adapter_config\.json: corrupt: not a regular file \(a FIFO\)"):
        checkpoint._sort_target_modules(tmp_path)


@pytest.mark.parametrize("which", ["adapter_weights", "optimizer", "rng"])
def test_tensor_files_are_checked_before_the_model_loads_them(tmp_path, which, monkeypatch):
    files = _checkpoint(tmp_path)
    path = getattr(files, which)
    path.unlink()
    os.mkfifo(path)
    with deadline(), pytest.raises(TrajhpcError, match=re.escape(f"{path}: corrupt: not a regular file (a FIFO)")):
        find_checkpoint(tmp_path)
    path.unlink()
    with pytest.raises(TrajhpcError, match=re.escape(f"{path}: missing from the checkpoint; delete {tmp_path}")):
        find_checkpoint(tmp_path)
    path.write_bytes(b"x" * 100)  # the other files hold 13 bytes
    monkeypatch.setattr(checkpoint, "TENSOR_MAX_BYTES", 50)
    with pytest.raises(TrajhpcError, match=re.escape(f"{path}: corrupt: larger than 50 bytes (100)")):
        find_checkpoint(tmp_path)


def test_tensor_loads_refuse_a_fifo_or_a_huge_file_without_reading_it(tmp_path, monkeypatch):
    files = _checkpoint(tmp_path)
    for path in (files.rng, files.adapter_weights):
        path.unlink()
        os.mkfifo(path)
    with deadline(), pytest.raises(TrajhpcError, match=re.escape(f"{files.rng}: corrupt: not a regular file (a FIFO)")):
        load_tensors(files.rng)
    with deadline(), pytest.raises(TrajhpcError, match=re.escape(f"{files.adapter_weights}: corrupt: not a regular")):
        restore_checkpoint(files.path, model=None, optimizer=None)  # refused before the model is touched
    files.rng.unlink()
    files.rng.write_bytes(b"x" * 100)
    monkeypatch.setattr(checkpoint, "TENSOR_MAX_BYTES", 10)
    with pytest.raises(TrajhpcError, match=re.escape(f"{files.rng}: corrupt: larger than 10 bytes (100); delete")):
        load_tensors(files.rng)


@pytest.mark.parametrize("damage", ["cut", "header"])
def test_a_truncated_or_damaged_adapter_is_refused_naming_it_and_the_remedy(tmp_path, damage):
    """peft's own error (SafetensorError: invalid header length) names no file and no remedy."""
    from safetensors.torch import save_file

    torch = pytest.importorskip("torch")
    files = _checkpoint(tmp_path)
    save_file({"w": torch.zeros(64)}, str(files.adapter_weights))
    assert find_checkpoint(tmp_path) is not None  # complete: accepted
    data = files.adapter_weights.read_bytes()
    files.adapter_weights.write_bytes(data[:-10] if damage == "cut" else b"\xff" * 8 + data[8:])
    what = "truncated" if damage == "cut" else "truncated or damaged"
    advice = f"delete {tmp_path} to start the job over"
    with pytest.raises(TrajhpcError, match=re.escape(f"{files.adapter_weights}: {what}") + ".*" + re.escape(advice)):
        find_checkpoint(tmp_path)
    with pytest.raises(TrajhpcError, match=re.escape(f"{files.adapter_weights}: {what}") + ".*" + re.escape(advice)):
        restore_checkpoint(files.path, model=None, optimizer=None)
