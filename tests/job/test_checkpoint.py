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


# ---------------------------------------------------------------- adapter settings on resume


@pytest.fixture(scope="module")
def saved_adapter(tiny, tmp_path_factory):
    """(folder of a saved adapter, a fresh base to load it on, the LoraSpec it was made with)."""
    import torch

    from trajhpc.job import train
    from trajhpc.spec import LoraSpec

    path, _ = tiny
    lora = LoraSpec(r=4, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))

    def base():
        return train.load_base_model(path, quantization="none", compute_dtype=torch.float32,
                                     device=torch.device("cpu"), gradient_checkpointing=False)

    folder = tmp_path_factory.mktemp("job") / "checkpoint" / "adapter"
    train.attach_lora(base(), lora).save_pretrained(str(folder))
    checkpoint._sort_target_modules(folder)
    return folder, base, lora


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lora_alpha", 1600, "lora_alpha is 1600, but this job's spec has lora.alpha 16"),
        ("r", 8, "r is 8, but this job's spec has lora.r 4"),
        ("lora_dropout", 0.5, "lora_dropout is 0.5, but this job's spec has lora.dropout 0.05"),
        ("lora_alpha", "16", "lora_alpha is '16', but this job's spec has lora.alpha 16"),
        ("target_modules", ["k_proj", "v_proj"], "target_modules is ['k_proj', 'v_proj'], but this job's spec has "
                                                 "lora.target_modules ['q_proj', 'v_proj']"),
    ],
)
def test_a_checkpoint_with_other_adapter_settings_is_refused_naming_file_field_and_remedy(
    saved_adapter, tmp_path, field, value, message
):
    import shutil

    from trajhpc.job import train

    folder, base, lora = saved_adapter
    edited = tmp_path / "checkpoint" / "adapter"
    shutil.copytree(folder, edited)
    config = json.loads((edited / "adapter_config.json").read_text())
    config[field] = value
    (edited / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(TrajhpcError) as err:
        train.attach_lora(base(), lora, edited)
    text = str(err.value)
    assert text.startswith(f"{edited / 'adapter_config.json'}: {message}")
    assert text.endswith(f"delete {tmp_path} to start the job over")


def test_a_checkpoint_with_the_specs_adapter_settings_loads(saved_adapter):
    from trajhpc.job import train

    folder, base, lora = saved_adapter
    model = train.attach_lora(base(), lora, folder)
    assert model.peft_config["default"].lora_alpha == 16
    # The same spec written in another order or as a set is the same adapter.
    train.attach_lora(base(), lora.model_copy(update={"target_modules": ("v_proj", "q_proj")}), folder)


def test_all_linear_is_compared_as_the_modules_it_stands_for(tiny, tmp_path):
    import torch

    from trajhpc.job import train
    from trajhpc.spec import LoraSpec

    path, _ = tiny

    def base():
        return train.load_base_model(path, quantization="none", compute_dtype=torch.float32,
                                     device=torch.device("cpu"), gradient_checkpointing=False)

    folder = tmp_path / "checkpoint" / "adapter"
    train.attach_lora(base(), LoraSpec(r=4)).save_pretrained(str(folder))
    train.attach_lora(base(), LoraSpec(r=4), folder)  # all-linear against the list peft saved for it
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(TrajhpcError, match=r"target_modules is \['q_proj'\], but this job's spec has lora.target_modules \["):
        train.attach_lora(base(), LoraSpec(r=4), folder)


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
