"""A job's checkpoint: adapter, optimizer, scheduler and RNG state of the last trained stage,
and its :class:`CheckpointState` (``trainer_state.json``: which stage, the counters after it).

Written into a temp folder and swapped in whole (the previous checkpoint stays until the
new one is complete). The folder's file names are :class:`trajhpc.jobdir.paths.CheckpointDir`'s.
Every file is read through :mod:`trajhpc.jobdir.paths`'s checks first (a regular file of
bounded size: a FIFO never hangs the job, a huge file is refused, both naming the file);
tensor files with ``weights_only`` loading only: nothing executable is ever loaded from a
job directory.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np
import torch

from trajhpc.core.atomic import atomic_write_bytes, atomic_write_json
from trajhpc.core.errors import TrajhpcError
from trajhpc.job.modelfiles import check_safetensors
from trajhpc.jobdir.paths import ADAPTER_CONFIG, CheckpointDir, FileProblem, JobDir, open_regular, read_json_object

# trainer_state.json and adapter_config.json are a few hundred bytes.
JSON_MAX_BYTES = 2**20
# Far above the adapter weights and optimizer state of any LoRA (a few GB for r=64 on a 70B model).
TENSOR_MAX_BYTES = 64 * 2**30

RNG_SCHEMA = "trajhpc.rng/1"


def rng_state() -> dict[str, Any]:
    """Every RNG a stage draws from (dropout uses torch's; data order is seeded separately),
    as tensors and plain values only, so that ``torch.load(weights_only=True)`` reads it back."""
    version, internal, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "schema": RNG_SCHEMA,
        # Mersenne Twister words are < 2**32: exact in int64.
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"name": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"]))
    np.random.set_state(
        (npy["name"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _start_over(ckpt: Path) -> str:
    return f"delete {ckpt.parent} to start the job over"


def _open_checked(path: Path, max_bytes: int, advice: str) -> BinaryIO:
    """``path`` opened if it is a regular file of at most ``max_bytes``; TrajhpcError naming it otherwise."""
    try:
        return open_regular(path, max_bytes=max_bytes)
    except FileProblem as problem:
        what = "missing from the checkpoint" if problem.kind == "missing" else problem.detail
        raise TrajhpcError(f"{path}: {what}; {advice}") from None


def _read_object(path: Path, advice: str) -> dict[str, Any]:
    """A JSON object file of a checkpoint, read through the bounded reader; TrajhpcError naming it otherwise."""
    try:
        value = read_json_object(path, max_bytes=JSON_MAX_BYTES)
    except FileProblem as problem:
        raise TrajhpcError(f"{path}: {problem.detail}; {advice}") from None
    if value is None:
        raise TrajhpcError(f"{path}: missing from the checkpoint; {advice}")
    return value


def load_tensors(path: Path) -> Any:
    """A torch file of the job directory, read with ``weights_only=True``: tensors and plain values only.

    Nothing executable is ever loaded from a job directory: a file that needs real
    unpickling (crafted, or written by trajhpc before RNG states were plain tensors)
    is refused, naming the file; so is a damaged one, a missing one, and one that is
    no regular file or larger than :data:`TENSOR_MAX_BYTES`. All are TrajhpcErrors.
    """
    import pickle

    start_over = _start_over(path.parent)
    with _open_checked(path, TENSOR_MAX_BYTES, start_over) as f:
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's own message advises allowlisting the global: exactly what must not happen here.
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
            if unsafe:
                raise TrajhpcError(
                    f"{path}: refusing to load it: it needs unpickling ({unsafe.group(1)}), which could run code; "
                    f"{start_over}"
                ) from None
            raise TrajhpcError(f"{path}: damaged, not a readable torch file; {start_over}") from None
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for a damaged file
            raise TrajhpcError(
                f"{path}: damaged, not a readable torch file ({type(err).__name__}); {start_over}"
            ) from None


# ---------------------------------------------------------------- the state: trainer_state.json

# The fields of trainer_state.json: the JSON values each may hold, and how to say so.
_STATE_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "job_id": ((str,), "a string"),
    "stage": ((int,), "an integer"),
    "consumed": ((int,), "an integer"),
    "train_loss": ((int, float, type(None)), "a number or null"),
    "train_seconds": ((int, float, type(None)), "a number or null"),
    "tokens": ((dict,), "an object"),
}


@dataclass(frozen=True)
class CheckpointState:
    """What ``trainer_state.json`` holds: the stage the checkpoint is of, and what the stages
    through it trained and counted (the next stage goes on from these)."""

    job_id: str
    stage: int  # 0: the freshly initialized adapter, nothing trained
    consumed: int  # token-budget count consumed through ``stage`` (0 without a budget)
    train_loss: float | None  # the stage's mean training loss (None for stage 0)
    train_seconds: float | None  # the stage's training wall time
    tokens: Mapping[str, Any]  # the stage's tokens.json entry

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object: the keys (and values) trajhpc has always written."""
        return {"job_id": self.job_id, "stage": self.stage, "consumed": self.consumed, "train_loss": self.train_loss,
                "train_seconds": self.train_seconds, "tokens": dict(self.tokens)}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any], path: Path) -> "CheckpointState":
        """The state in a file's JSON object; a TrajhpcError naming ``path`` when a field is missing or mistyped."""
        for key, (types, kind) in _STATE_FIELDS.items():
            v = value.get(key, ...)
            if v is ... or isinstance(v, bool) or not isinstance(v, types) or (key == "stage" and v < 0):
                what = "missing" if v is ... else f"{v!r}, not {kind}" + (" from 0" if key == "stage" else "")
                raise TrajhpcError(f"{path}: not a trajhpc checkpoint state ({key} {what}); {_start_over(path.parent)}")
        return cls(**{key: value[key] for key in _STATE_FIELDS})


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its folder and its state."""

    path: Path
    state: CheckpointState

    @property
    def files(self) -> CheckpointDir:
        return CheckpointDir(self.path)


def _torch_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _sort_target_modules(adapter_dir: Path) -> None:
    """peft writes ``target_modules`` from a set, so its order varies between processes: sort it."""
    path = adapter_dir / ADAPTER_CONFIG
    config = _read_object(path, "peft's save_pretrained wrote no usable adapter config")
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        atomic_write_json(path, config)


# The spec's LoRA settings as peft's adapter_config.json names them.
_ADAPTER_FIELDS = (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"), ("target_modules", "target_modules"))


def check_adapter_settings(adapter_dir: Path, lora: Any, all_linear: Any = None) -> None:
    """Refuse a saved adapter whose settings are not the spec's ``lora`` (a LoraSpec).

    peft loads an adapter with the settings of its own ``adapter_config.json``; an edited or
    foreign one would resume and finish with results the spec does not describe.
    ``all_linear`` gives the module names ``target_modules: all-linear`` stands for on this
    model (peft saves them as a list); without it that field is not compared.
    """
    path = adapter_dir / ADAPTER_CONFIG
    advice = _start_over(adapter_dir.parent)
    config = _read_object(path, advice)
    for saved_name, spec_name in _ADAPTER_FIELDS:
        expected = getattr(lora, spec_name)
        saved = config.get(saved_name)
        if spec_name == "target_modules":
            if expected == "all-linear":
                if all_linear is None:
                    continue
                expected = all_linear
            if not isinstance(expected, str):
                expected = sorted(set(expected))
                saved = sorted(set(saved)) if isinstance(saved, list) and all(isinstance(m, str) for m in saved) else saved
        elif type(saved) not in (int, float) or isinstance(saved, bool):
            saved = repr(saved)  # shown as found, never equal to a number
        if saved != expected:
            raise TrajhpcError(
                f"{path}: {saved_name} is {saved}, but this job's spec has lora.{spec_name} {expected}: the checkpoint "
                f"was not trained with the job's adapter settings; {advice}"
            )


def save_checkpoint(
    job_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: CheckpointState,
    scheduler_state: dict[str, Any] | None = None,
) -> Path:
    """Write adapter, optimizer, scheduler, RNG and ``state`` as ``job_dir/checkpoint``; returns that folder.

    Written into a temp folder, then swapped in by renames; :func:`find_checkpoint`
    repairs a swap interrupted between its two renames. A write that fails (disk
    full) removes the temp folder and is a TrajhpcError; the previous checkpoint stays.
    """
    names = JobDir(job_dir)
    tmp, old, final = names.checkpoint_tmp, names.checkpoint_old, names.checkpoint
    files = CheckpointDir(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(str(files.adapter))
        _sort_target_modules(files.adapter)
        atomic_write_bytes(files.optimizer, _torch_bytes(optimizer.state_dict()))
        atomic_write_bytes(files.scheduler, _torch_bytes(scheduler_state))
        atomic_write_bytes(files.rng, _torch_bytes(rng_state()))
        atomic_write_json(files.state, state.to_dict())  # last: its presence marks a complete checkpoint
    except (OSError, TrajhpcError) as err:  # not on a kill (BaseException): that leaves things as they are
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise TrajhpcError(f"cannot write the checkpoint in {tmp}: {err.strerror or err}") from err
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(job_dir: Path) -> Checkpoint | None:
    """The complete checkpoint in ``job_dir``, or None (half-written ones are ignored).

    Its state is read and the files a resumed run loads are checked (there, regular, of
    bounded size: peft reads the adapter folder by name, and a FIFO would hang it) before
    anything is loaded; a file that fails is a TrajhpcError naming it.
    """
    names = JobDir(job_dir)
    final = names.checkpoint
    if not CheckpointDir(final).state.exists():
        # Killed between the two renames of save_checkpoint: the newest complete one wins.
        for candidate in (names.checkpoint_tmp, names.checkpoint_old):
            if CheckpointDir(candidate).state.exists():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(candidate, final)
                break
        else:
            return None
    files = CheckpointDir(final)
    advice = _start_over(final)
    state = CheckpointState.from_dict(_read_object(files.state, advice), files.state)
    _read_object(files.adapter_config, advice)
    for path in (files.adapter_weights, files.optimizer, files.rng):
        _open_checked(path, TENSOR_MAX_BYTES, advice).close()
    check_safetensors(files.adapter_weights, advice)  # peft's own error names no file
    return Checkpoint(final, state)


def restore_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load adapter weights (in place), optimizer state and RNG state from the checkpoint folder ``ckpt``.

    The uninterrupted run calls this at every stage boundary too, so it and a
    resumed run continue from exactly the same bytes.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    files = CheckpointDir(ckpt)
    path = files.adapter_weights
    _open_checked(path, TENSOR_MAX_BYTES, _start_over(ckpt)).close()  # load_file maps it by its name
    check_safetensors(path, _start_over(ckpt))
    try:
        weights = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise TrajhpcError(
            f"{path}: damaged, not a readable safetensors file ({type(err).__name__}); {_start_over(ckpt)}"
        ) from None
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"checkpoint {ckpt}: unexpected adapter keys {result.unexpected_keys[:3]}")
    optimizer.load_state_dict(load_tensors(files.optimizer))
    rng = load_tensors(files.rng)
    try:
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise TrajhpcError(
            f"{files.rng}: not a trajhpc RNG state ({type(err).__name__}: {err}); {_start_over(ckpt)}"
        ) from None
